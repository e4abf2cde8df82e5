"""A run's fp32 bundle becomes its int8 bundle (`clare-dist export --int8`).

The scans come from the run's own label table, decoded with the bundle's preprocessing:
calibration from the training folds of the exported fold (for an ensemble, of its first fold),
the check from that fold's test fold, which the model was not fitted to (an ensemble's other
members were: its check is optimistic by that much). The int8 bundle replaces the fp32 one only
once the check has passed (`quantize.quantize_regressor`); its manifest keeps every other field
and adds `quantization`, and its model_version is new (the graph is another).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from clare_dist.archive import index_images, locate
from clare_dist.bundle import Bundle, write_bundle
from clare_dist.cxr14 import fold_split
from clare_dist.quantize import quantize_regressor
from clare_dist.reference_file import REFERENCES_FILE
from clare_dist.runs import LABELS_FILE
from clare_dist.scans import ScanError, preprocess_scan

log = logging.getLogger(__name__)

CALIBRATION_SCANS = 128
CHECK_SCANS = 1000


def decoded(table: pd.DataFrame, image_root: Path, bundle: Bundle, count: int, seed: int = 0) -> list[np.ndarray]:
    """Up to `count` of the table's scans (a fixed random sample), as the model's input; bad scans are skipped."""
    names = table["image_index"].sample(frac=1.0, random_state=seed).head(count)
    config = bundle.scan_config()
    scans = []
    for path in locate(names, index_images(image_root), image_root):
        try:
            scans.append(preprocess_scan(path, config))
        except ScanError as exc:
            log.warning("skipping %s for quantisation: %s", path.name, exc)
    return scans


def quantize_run_bundle(run: Path, image_root: Path, bundle: Bundle, calibration_scans: int = CALIBRATION_SCANS,
                        check_scans: int = CHECK_SCANS) -> Bundle:
    """Replace the run's fp32 `bundle` by its int8 one, or raise QuantizationError and keep it."""
    table = pd.read_parquet(run / LABELS_FILE)
    split = fold_split(bundle.manifest["folds"][0])
    calibration = decoded(table[table["fold"].isin(split.train)], image_root, bundle, calibration_scans)
    check = decoded(table[table["fold"] == split.test], image_root, bundle, check_scans, seed=1)
    manifest = bundle.manifest
    with tempfile.TemporaryDirectory(dir=run) as tmp:
        int8 = Path(tmp) / "regressor.onnx"
        report = quantize_regressor(bundle.onnx_path, int8, calibration, check, bundle.references, bundle.model_version)
        references = Path(tmp) / REFERENCES_FILE  # the bundle's own is replaced with the bundle
        references.write_bytes((bundle.path / REFERENCES_FILE).read_bytes())
        return write_bundle(
            bundle.path, int8, references, backbone=manifest["backbone"], image_size=bundle.image_size,
            folds=manifest["folds"], ensemble=manifest["ensemble"], metrics=manifest["metrics"],
            data_hash=manifest["data_hash"], preprocessing_id=bundle.preprocessing,
            quantization=report.manifest_entry(),
        )
