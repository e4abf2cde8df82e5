"""One cross-validation fold, in plain PyTorch: the baseline classifier, then the regressor.

This is what a Ray Train worker runs (jobs/train_cv.py), and what a laptop runs directly.
Every epoch ends with an atomic checkpoint in the fold's directory, so an interrupted fold
continues at the next epoch and a finished phase is never trained again. The regressor starts
from the baseline's best weights, as in the paper. A trained fold then fits its out-of-distribution
statistics (`clare_dist.ood_fit`) and predicts its validation and test folds, the OOD score beside
the coordinates, and scores the outliers made of its test scans.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from clare_dist.archive import index_images, locate
from clare_dist.atomic import atomic_path, write_json_atomic
from clare_dist.cxr14 import fold_split
from clare_dist.dataset import ScanDataset, targets_for
from clare_dist.evaluation import PREDICTION_COLUMNS
from clare_dist.labels import CLASSES
from clare_dist.losses import LOSSES, regression_loss
from clare_dist.models import ModelConfig, ScanNet, build_model, load_backbone_from
from clare_dist.ood import OOD_OUTPUT, FeatureStatistics
from clare_dist.ood_fit import OUTLIER_SCANS, features_and_coords, fit_fold_statistics, outlier_scores
from clare_dist.rules import References
from clare_dist.scans.preprocessing import DEFAULT_PREPROCESSING, preprocessing
from clare_dist.runs import (
    DONE_FILE,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    OOD_STATISTICS_FILE,
    OUTLIER_PREDICTIONS_FILE,
    PREDICTIONS_FILE,
    VALIDATION_PREDICTIONS_FILE,
    best_weights,
    phase_dir,
    save_ood_statistics,
)

log = logging.getLogger(__name__)

PHASES: tuple[str, ...] = ("baseline", "regressor")
Reporter = Callable[[dict], None]


@dataclass(frozen=True)
class TrainConfig:
    """Defaults follow the paper (ResNet50, 256 px); the tiny runs pass smaller values."""

    backbone: str = "resnet50"
    weights: str | None = None
    image_size: int = 256
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    patience: int = 5
    seed: int = 0
    num_workers: int = 2
    device: str = "auto"
    loss: str = "mse"  # the regressor's: "mse" (the paper's) or "distance" (clare_dist/losses.py)
    preprocessing: str = DEFAULT_PREPROCESSING  # how scans become the model's input (scans.preprocessing); the bundle records it

    def __post_init__(self) -> None:
        for name in ("image_size", "epochs", "batch_size", "patience"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive; got {getattr(self, name)}")
        preprocessing(self.preprocessing)  # UnknownPreprocessingError for an id this clare-dist lacks
        if self.loss not in LOSSES:
            raise ValueError(f"TrainConfig.loss must be one of {LOSSES}; got {self.loss!r}")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' is the GPU when CUDA is present, the CPU otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _save_atomic(obj: object, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _loader(dataset: ScanDataset, config: TrainConfig, shuffle: bool, seed: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


@dataclass
class FoldData:
    """Paths and tables of one fold's train, validation and test images."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    paths: dict[str, Path]

    def dataset(self, part: str, kind: str, references: References, config: TrainConfig, augment: bool = False) -> ScanDataset:
        table = getattr(self, part)
        coords = dict(zip(references.names, references.coords))
        targets = targets_for(table, kind, coords)
        return ScanDataset([self.paths[n] for n in table["image_index"]], targets, config.image_size, augment=augment,
                           preprocessing=config.preprocessing)


def fold_data(table: pd.DataFrame, image_root: str | os.PathLike, fold: int) -> FoldData:
    split = fold_split(fold)
    parts = {
        "train": table[table["fold"].isin(split.train)],
        "validation": table[table["fold"] == split.validation],
        "test": table[table["fold"] == split.test],
    }
    for part, rows in parts.items():
        if rows.empty:
            raise ValueError(f"fold {fold}: the {part} split is empty; the label table needs images in all 5 folds")
    paths = dict(zip(table["image_index"], locate(table["image_index"], index_images(image_root), image_root)))
    return FoldData(paths=paths, **{k: v.reset_index(drop=True) for k, v in parts.items()})


def _run_epoch(model: ScanNet, loader: DataLoader, loss_fn: nn.Module, device: torch.device,
               optimiser: torch.optim.Optimizer | None, scaler: torch.amp.GradScaler | None) -> float:
    training = optimiser is not None
    model.train(training)
    total, count = 0.0, 0
    with torch.set_grad_enabled(training):
        for scans, targets in loader:
            scans, targets = scans.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
                loss = loss_fn(model(scans).float(), targets)
            if training:
                optimiser.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
            total += float(loss.detach()) * len(scans)
            count += len(scans)
    return total / max(count, 1)


def train_phase(phase: str, fold: int, data: FoldData, references: References, fold_dir: Path,
                config: TrainConfig, report: Reporter | None = None) -> Path:
    """Train one phase with per-epoch checkpoints; returns the best weights' path."""
    phase_path = phase_dir(fold_dir, phase)
    phase_path.mkdir(parents=True, exist_ok=True)
    last, best_path = phase_path / LAST_CHECKPOINT, best_weights(fold_dir, phase)
    device = resolve_device(config.device)
    head, kind = ("classification", "bits") if phase == "baseline" else ("regression", "coords")
    model = build_model(ModelConfig(backbone=config.backbone, head=head, weights=config.weights)).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    state = {"epoch": -1, "best": float("inf"), "stale": 0, "done": False, "history": []}
    if last.exists():
        checkpoint = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = checkpoint["state"]
        log.info("fold %d %s: resuming after epoch %d", fold, phase, state["epoch"] + 1)
    elif phase == "regressor":
        baseline = torch.load(best_weights(fold_dir, "baseline"), map_location=device, weights_only=True)
        load_backbone_from(model, baseline)
    if state["done"]:
        return best_path

    loss_fn = nn.BCEWithLogitsLoss() if phase == "baseline" else regression_loss(config.loss, references)
    train = data.dataset("train", kind, references, config, augment=True)
    validation = _loader(data.dataset("validation", kind, references, config), config, False, 0)
    for epoch in range(state["epoch"] + 1, config.epochs):
        start = time.perf_counter()
        epoch_seed = config.seed * 100_003 + fold * 1009 + PHASES.index(phase) * 101 + epoch
        torch.manual_seed(epoch_seed)
        train_loss = _run_epoch(model, _loader(train, config, True, epoch_seed), loss_fn, device, optimiser, scaler)
        val_loss = _run_epoch(model, validation, loss_fn, device, None, None)
        improved = val_loss < state["best"]
        if improved:
            _save_atomic(model.state_dict(), best_path)
        state = {
            "epoch": epoch,
            "best": min(val_loss, state["best"]),
            "stale": 0 if improved else state["stale"] + 1,
            "done": False,
            "history": state["history"] + [{"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                              "improved": improved, "seconds": time.perf_counter() - start}],
        }
        state["done"] = state["stale"] >= config.patience or epoch == config.epochs - 1
        _save_atomic({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                      "scaler": scaler.state_dict(), "state": state}, last)
        write_json_atomic(phase_path / HISTORY_FILE, state["history"])
        log.info("fold %d %s epoch %d/%d: train %.4f, val %.4f%s (%.1f s)", fold, phase, epoch + 1, config.epochs,
                 train_loss, val_loss, " best" if improved else "", state["history"][-1]["seconds"])
        if report is not None:
            report({"fold": fold, "phase": phase, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if state["done"]:
            break
    return best_path


@torch.no_grad()
def predict(model: ScanNet, dataset: ScanDataset, config: TrainConfig) -> np.ndarray:
    device = next(model.parameters()).device
    model.eval()
    outputs = [model(scans.to(device)).float().cpu() for scans, _ in _loader(dataset, config, False, 0)]
    return torch.cat(outputs).numpy()


def train_fold(fold: int, table: pd.DataFrame, image_root: str | os.PathLike, references: References,
               fold_dir: str | os.PathLike, config: TrainConfig, report: Reporter | None = None) -> Path:
    """Baseline, then regressor, then the OOD statistics (fitted on the training images, the threshold
    on the validation fold), then their predictions on the test fold and on the validation fold
    (where the evaluation's fair protocol fits every threshold) and the outliers' OOD scores;
    skipped when already done."""
    fold_dir = Path(fold_dir)
    if (fold_dir / DONE_FILE).exists():
        log.info("fold %d: already done, nothing to train", fold)
        return fold_dir / PREDICTIONS_FILE
    fold_dir.mkdir(parents=True, exist_ok=True)
    data = fold_data(table, image_root, fold)
    log.info("fold %d: %d train (×2 augmented), %d validation, %d test images",
             fold, len(data.train), len(data.validation), len(data.test))
    device = resolve_device(config.device)
    weights = {phase: train_phase(phase, fold, data, references, fold_dir, config, report) for phase in PHASES}

    models = {}
    for phase, head in (("baseline", "classification"), ("regressor", "regression")):
        models[phase] = build_model(ModelConfig(backbone=config.backbone, head=head)).to(device)
        models[phase].load_state_dict(torch.load(weights[phase], map_location=device, weights_only=True))
    statistics = fit_fold_statistics(models["regressor"], data, config.image_size, config.batch_size, config.seed + fold)
    save_ood_statistics(statistics, fold_dir / OOD_STATISTICS_FILE)
    log.info("fold %d: OOD threshold %.4g fitted on %d validation images (%.1f%% of them flagged)", fold,
             statistics.threshold, statistics.validation_images, 100 * statistics.validation_flagged)
    test_scans = data.dataset("test", "bits", references, config)
    first = range(min(OUTLIER_SCANS, len(test_scans)))
    outliers = outlier_scores(models["regressor"], statistics, np.stack([test_scans[i][0][0].numpy() for i in first]),
                              list(data.test["image_index"].iloc[list(first)]), config.batch_size, config.seed + fold)
    with atomic_path(fold_dir / OUTLIER_PREDICTIONS_FILE) as tmp:
        outliers.to_parquet(tmp, index=False)
    path = fold_dir / PREDICTIONS_FILE
    for part, name in (("validation", VALIDATION_PREDICTIONS_FILE), ("test", PREDICTIONS_FILE)):  # the test fold's last
        predictions = _predictions(models, data, part, references, config, statistics)
        with atomic_path(fold_dir / name) as tmp:
            predictions.to_parquet(tmp, index=False)
    write_json_atomic(fold_dir / DONE_FILE, {"fold": fold, "config": asdict(config), "test_images": len(predictions)})
    log.info("fold %d: done, %d test predictions in %s", fold, len(predictions), path)
    return path


def _predictions(models: dict[str, nn.Module], data: FoldData, part: str, references: References,
                 config: TrainConfig, statistics: FeatureStatistics) -> pd.DataFrame:
    """Both models' outputs on one part of the fold (test or validation), in PREDICTION_COLUMNS, and
    the regressor's OOD score (`ood_score`)."""
    scans = _loader(data.dataset(part, "coords", references, config), config, False, 0)
    features, coords = features_and_coords(models["regressor"], scans)
    logits = predict(models["baseline"], data.dataset(part, "bits", references, config), config)
    table = getattr(data, part)
    predictions = table[["image_index", "fold", "combination", *CLASSES]].copy()
    predictions["x"], predictions["y"] = coords[:, 0], coords[:, 1]
    probabilities = 1 / (1 + np.exp(-logits))
    for i, code in enumerate(CLASSES):
        predictions[f"p_{code}"] = probabilities[:, i]
    predictions[OOD_OUTPUT] = statistics.scores(features)
    return predictions[[*PREDICTION_COLUMNS, OOD_OUTPUT]]
