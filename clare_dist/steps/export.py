"""A run's regressor as a model bundle, checked against torch on the run's own scans."""

from __future__ import annotations

from pathlib import Path


def export(run: Path, images: Path, fold: int | None, ensemble: bool):
    """Export one fold (the first finished unless given) or the mean of all folds; returns the bundle."""
    import pandas as pd

    from clare_dist.run_export import check_images, export_run, run_preprocessing
    from clare_dist.runs import LABELS_FILE, fold_settings

    settings = fold_settings(run, None if ensemble else fold)
    table = pd.read_parquet(run / LABELS_FILE)
    scans = check_images(table, images, settings["image_size"], preprocessing=run_preprocessing(settings))
    return export_run(run, scans, fold=fold, ensemble=ensemble)
