"""A run's regressor as a model bundle, checked against torch on the run's own scans."""

from __future__ import annotations

from pathlib import Path


def export(run: Path, images: Path, fold: int | None, ensemble: bool, int8: bool = False):
    """Export one fold (the first finished unless given) or the mean of all folds; returns the bundle.
    With `int8`, the bundle's regressor is then quantised, and kept fp32 if that changes too many decisions."""
    import pandas as pd

    from clare_dist.run_export import check_images, export_run, run_preprocessing
    from clare_dist.runs import LABELS_FILE, fold_settings

    settings = fold_settings(run, None if ensemble else fold)
    table = pd.read_parquet(run / LABELS_FILE)
    scans = check_images(table, images, settings["image_size"], preprocessing=run_preprocessing(settings))
    bundle = export_run(run, scans, fold=fold, ensemble=ensemble)
    if not int8:
        return bundle
    from clare_dist.run_quantize import quantize_run_bundle

    return quantize_run_bundle(run, images, bundle)
