"""The run directory's layout: every name a training run writes, spelled once, here.

A run holds `labels.parquet` and `references.json` (copied in at the start, so the fold
assignment and the coordinate system are saved with the run), `fold_k/` per fold (each phase's
`last.pt`, `best.pt` and `history.json` in `fold_k/<phase>/`, then the OOD statistics
`ood_statistics.npz` and `outlier_predictions.parquet`, `validation_predictions.parquet`,
`predictions.parquet` and, last, `done.json`), `evaluation/`, `bundle/`, and Ray's own records in `ray/`. Training,
evaluation, the export and the jobs ask this module where things are, so the layout can change
in one place. The export of a run as a model bundle is `run_export.py`: a Ray Train worker that
asks for its fold's paths does not import ONNX.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from clare_dist.atomic import atomic_path
from clare_dist.errors import ClareError
from clare_dist.ood import FeatureStatistics
from clare_dist.reference_file import REFERENCES_FILE

LABELS_FILE = "labels.parquet"
EVALUATION_DIR = "evaluation"
BUNDLE_DIR = "bundle"
EXPORT_DIR = "export"  # where the ONNX graph is written before it becomes the bundle
RAY_DIR = "ray"  # Ray Tune's and Ray Train's storage_path
DONE_FILE = "done.json"
PREDICTIONS_FILE = "predictions.parquet"  # the test fold's
VALIDATION_PREDICTIONS_FILE = "validation_predictions.parquet"  # the validation fold's: where thresholds are fitted
OOD_STATISTICS_FILE = "ood_statistics.npz"  # the regressor's training features and OOD threshold (clare_dist.ood)
OUTLIER_PREDICTIONS_FILE = "outlier_predictions.parquet"  # OOD scores of outliers made of the test fold's scans
BEST_WEIGHTS = "best.pt"
LAST_CHECKPOINT = "last.pt"
HISTORY_FILE = "history.json"
# What `clare-dist evaluate` writes into evaluation/, by what it is.
EVALUATION_FILES = {
    "markdown": "evaluation.md",
    "json": "evaluation.json",
    "fig4": "fig4_predictions.png",
    "roc_pr": "roc_pr.png",
}
_FOLD_PREFIX = "fold_"


class RunError(ClareError, ValueError):
    """A run directory that does not match what the command was given."""


def fold_name(fold: int) -> str:
    """`fold_k`: the fold's directory name, also the name of its Ray Train run."""
    return f"{_FOLD_PREFIX}{fold}"


def fold_dir(run: Path, fold: int) -> Path:
    return run / fold_name(fold)


def fold_dirs(run: Path) -> list[int]:
    """The folds that have a directory in the run, finished or not, in order."""
    return sorted(int(p.name.removeprefix(_FOLD_PREFIX)) for p in run.glob(f"{_FOLD_PREFIX}*")
                  if p.is_dir() and p.name.removeprefix(_FOLD_PREFIX).isdigit())


def finished_folds(run: Path) -> list[int]:
    """The folds whose `done.json` is written: trained and predicted, never to be trained again."""
    return sorted(int(p.parent.name.removeprefix(_FOLD_PREFIX)) for p in run.glob(f"{_FOLD_PREFIX}*/{DONE_FILE}"))


def fold_settings(run: Path, fold: int | None = None) -> dict:
    """The training settings a finished fold recorded in its `done.json` (the first finished unless given)."""
    done = finished_folds(run)
    if not done:
        raise RunError(f"{run} has no finished fold; run `clare-dist train` first")
    chosen = done[0] if fold is None else fold
    if chosen not in done:
        raise RunError(f"fold {chosen} is not finished in {run}; finished folds: {done}")
    return json.loads((fold_dir(run, chosen) / DONE_FILE).read_text())["config"]


def phase_dir(fold_path: Path, phase: str) -> Path:
    """Where a fold's phase (baseline, regressor) keeps its checkpoints and history."""
    return fold_path / phase


def best_weights(fold_path: Path, phase: str) -> Path:
    return phase_dir(fold_path, phase) / BEST_WEIGHTS


def init_run(run: Path, labels: Path, references: Path) -> None:
    """Copy the label table and references into the run; refuse to mix a run with other inputs."""
    run.mkdir(parents=True, exist_ok=True)
    references_file = references / REFERENCES_FILE if references.is_dir() else references
    for source, name in ((labels, LABELS_FILE), (references_file, REFERENCES_FILE)):
        if not source.is_file():
            raise FileNotFoundError(f"{source} does not exist")
        target = run / name
        if target.exists():
            if file_sha256(target) != file_sha256(source):
                raise RunError(f"{run} was started with a different {name}; use a new --out, or the original file")
        else:
            shutil.copyfile(source, target)


def save_ood_statistics(statistics: FeatureStatistics, path: Path) -> Path:
    """A fold's OOD statistics as `ood_statistics.npz`, written whole or not at all."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **statistics.arrays())
    return path


def load_ood_statistics(path: Path) -> FeatureStatistics | None:
    """A fold's OOD statistics, or None for a fold trained before they existed."""
    if not path.is_file():
        return None
    with np.load(path) as arrays:
        return FeatureStatistics.from_arrays(arrays)


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes: how a run recognises its inputs, and the bundle its data."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
