"""The run directory: what a training run keeps, and how it becomes a model bundle.

Layout: `labels.parquet` and `references.json` (copied in at the start, so the fold
assignment and the coordinate system are saved with the run), `fold_k/` per fold (the
phases' checkpoints, `predictions.parquet`, `done.json`), `evaluation/`, and `bundle/`.
Only `export_run` needs torch (it loads the folds' checkpoints), and imports it itself: the rest
is the layout the command line reads, and screening must not load torch with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from clare_dist.archive import index_images, locate
from clare_dist.bundle import Bundle, write_bundle
from clare_dist.reference_file import REFERENCES_FILE
from clare_dist.scans import ScanConfig, ScanError, preprocess_scan

log = logging.getLogger(__name__)

LABELS_FILE = "labels.parquet"
BUNDLE_DIR = "bundle"
EVALUATION_DIR = "evaluation"
DONE_FILE = "done.json"  # in fold_k/ once the fold is trained: what `train` skips and `export` reads


class RunError(ValueError):
    """A run directory that does not match what the command was given."""


def init_run(run: Path, labels: Path, references: Path) -> None:
    """Copy the label table and references into the run; refuse to mix a run with other inputs."""
    run.mkdir(parents=True, exist_ok=True)
    references_file = references / REFERENCES_FILE if references.is_dir() else references
    for source, name in ((labels, LABELS_FILE), (references_file, REFERENCES_FILE)):
        if not source.is_file():
            raise FileNotFoundError(f"{source} does not exist")
        target = run / name
        if target.exists():
            if _sha256(target) != _sha256(source):
                raise RunError(f"{run} was started with a different {name}; use a new --out, or the original file")
        else:
            shutil.copyfile(source, target)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished_folds(run: Path) -> list[int]:
    return sorted(int(p.parent.name.removeprefix("fold_")) for p in run.glob(f"fold_*/{DONE_FILE}"))


def check_images(table: pd.DataFrame, image_root: Path, image_size: int, count: int = 16) -> list[np.ndarray]:
    """A few of the run's own test scans, decoded, for verifying the exported graph."""
    names = table.sort_values("image_index")["image_index"].head(count * 2)
    images = []
    for path in locate(names, index_images(image_root), image_root):
        try:
            images.append(preprocess_scan(path, ScanConfig(size=image_size)))
        except ScanError as exc:
            log.warning("skipping %s as a check image: %s", path.name, exc)
        if len(images) == count:
            break
    return images


def export_run(run: Path, images: Sequence[np.ndarray], fold: int | None = None, ensemble: bool = False) -> Bundle:
    """Export one fold's regressor (default: the first finished) or the fold ensemble as the bundle."""
    import torch

    from clare_dist.export import export_regressor
    from clare_dist.models import ModelConfig, build_model

    done = finished_folds(run)
    if not done:
        raise RunError(f"{run} has no finished fold; run `clare-dist train` first")
    if ensemble:
        folds = done
    else:
        chosen = done[0] if fold is None else fold
        if chosen not in done:
            raise RunError(f"fold {chosen} is not finished in {run}; finished folds: {done}")
        folds = [chosen]
    settings = json.loads((run / f"fold_{folds[0]}" / DONE_FILE).read_text())["config"]
    models = []
    for f in folds:
        model = build_model(ModelConfig(backbone=settings["backbone"], head="regression"))
        model.load_state_dict(torch.load(run / f"fold_{f}" / "regressor" / "best.pt", map_location="cpu", weights_only=True))
        models.append(model.eval())
    onnx_path = run / "export" / "regressor.onnx"
    report = export_regressor(models, onnx_path, settings["image_size"], images)
    evaluation = run / EVALUATION_DIR / "evaluation.json"
    headline = json.loads(evaluation.read_text()).get("headline", {}) if evaluation.exists() else {}
    bundle = write_bundle(
        run / BUNDLE_DIR, onnx_path, run / REFERENCES_FILE,
        backbone=settings["backbone"], image_size=settings["image_size"], folds=folds, ensemble=ensemble,
        metrics={**headline, "onnx_max_abs_diff": report.max_abs_diff}, data_hash=_sha256(run / LABELS_FILE)[:16],
    )
    os.remove(onnx_path)
    return bundle
