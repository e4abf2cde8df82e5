"""A finished run becomes a model bundle: its regressor (one fold's or the fold ensemble) exported
to ONNX, checked against torch on the run's own scans, with the evaluation's headline metrics and,
where the (first) fold fitted them, its OOD statistics as the graph's second output.

Apart from the run's layout (`runs.py`) because it needs ONNX, ONNX Runtime and the decoders,
which the training workers that ask the layout for their paths do not.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from clare_dist.archive import index_images, locate
from clare_dist.bundle import Bundle, write_bundle
from clare_dist.export import export_regressor
from clare_dist.models import ModelConfig, build_model
from clare_dist.reference_file import REFERENCES_FILE
from clare_dist.runs import (
    BUNDLE_DIR,
    EVALUATION_DIR,
    EVALUATION_FILES,
    EXPORT_DIR,
    LABELS_FILE,
    OOD_STATISTICS_FILE,
    best_weights,
    file_sha256,
    finished_folds,
    fold_dir,
    fold_settings,
    load_ood_statistics,
)
from clare_dist.ood import manifest_entry
from clare_dist.scans import ScanConfig, ScanError, preprocess_scan
from clare_dist.scans.preprocessing import DEFAULT_PREPROCESSING, LEGACY_PREPROCESSING

log = logging.getLogger(__name__)


def check_images(table: pd.DataFrame, image_root: Path, image_size: int, count: int = 16,
                 preprocessing: str = DEFAULT_PREPROCESSING) -> list[np.ndarray]:
    """A few of the run's own test scans, decoded as in training, for verifying the exported graph."""
    names = table.sort_values("image_index")["image_index"].head(count * 2)
    images = []
    for path in locate(names, index_images(image_root), image_root):
        try:
            images.append(preprocess_scan(path, ScanConfig(size=image_size, preprocessing=preprocessing)))
        except ScanError as exc:
            log.warning("skipping %s as a check image: %s", path.name, exc)
        if len(images) == count:
            break
    return images


def run_preprocessing(settings: dict) -> str:
    """The preprocessing a run's folds were trained with; runs from before it was recorded used the legacy one."""
    return settings.get("preprocessing", LEGACY_PREPROCESSING)


def export_run(run: Path, images: Sequence[np.ndarray], fold: int | None = None, ensemble: bool = False) -> Bundle:
    """Export one fold's regressor (default: the first finished) or the fold ensemble as the bundle."""
    settings = fold_settings(run, None if ensemble else fold)
    folds = finished_folds(run) if ensemble else [fold if fold is not None else finished_folds(run)[0]]
    models = []
    for f in folds:
        model = build_model(ModelConfig(backbone=settings["backbone"], head="regression"))
        model.load_state_dict(torch.load(best_weights(fold_dir(run, f), "regressor"), map_location="cpu", weights_only=True))
        models.append(model.eval())
    onnx_path = run / EXPORT_DIR / "regressor.onnx"
    statistics = load_ood_statistics(fold_dir(run, folds[0]) / OOD_STATISTICS_FILE)
    if statistics is None:
        log.warning("fold %d has no OOD statistics (trained before them): the bundle's scans will not be checked "
                    "for out-of-distribution input; retrain the folds to add it", folds[0])
    report = export_regressor(models, onnx_path, settings["image_size"], images, statistics=statistics)
    evaluation = run / EVALUATION_DIR / EVALUATION_FILES["json"]
    headline = json.loads(evaluation.read_text()).get("headline", {}) if evaluation.exists() else {}
    ood = None if statistics is None else manifest_entry(
        statistics, f"penultimate (pooled) features of fold {folds[0]}'s regressor", report.ood_max_rel_diff)
    bundle = write_bundle(
        run / BUNDLE_DIR, onnx_path, run / REFERENCES_FILE,
        backbone=settings["backbone"], image_size=settings["image_size"], folds=folds, ensemble=ensemble,
        metrics={**headline, "onnx_max_abs_diff": report.max_abs_diff}, data_hash=file_sha256(run / LABELS_FILE)[:16],
        preprocessing_id=run_preprocessing(settings),
        ood=ood,
    )
    os.remove(onnx_path)
    return bundle
