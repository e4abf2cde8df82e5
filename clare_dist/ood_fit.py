"""The out-of-distribution score of one fold, fitted where the fold is trained (torch).

The fold's regressor sees its training images (a seeded sample of at most `FIT_IMAGES`): the
mean and covariance of their penultimate features are fitted there; the threshold on the
validation fold's images (`clare_dist.ood`); the test fold is only scored, never consulted. The
test fold's scans, and the outliers made of its first `OUTLIER_SCANS` scans
(`clare_dist.synth.outliers`), are scored for the evaluation to measure what share it flags.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from clare_dist.dataset import ScanDataset
from clare_dist.models import ScanNet
from clare_dist.ood import FeatureStatistics, fit_statistics
from clare_dist.synth.outliers import outliers

if TYPE_CHECKING:
    from clare_dist.training import FoldData

FIT_IMAGES = 2000  # training images whose features are fitted, at most (a seeded sample)
OUTLIER_SCANS = 40  # test scans each kind of outlier is made of
OUTLIER_COLUMNS: list[str] = ["image_index", "kind", "ood_score"]


@torch.no_grad()
def features_and_coords(model: ScanNet, scans: DataLoader | list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(N×D penultimate features, N×2 coordinates) of batches of N×1×S×S uint8 scans, in one pass."""
    device = next(model.parameters()).device
    model.eval()
    features, coords = [], []
    for batch in scans:
        batch = batch[0] if isinstance(batch, (tuple, list)) else batch
        f = model.features(batch.to(device))
        features.append(f.float().cpu())
        coords.append(model.backbone.fc(f).float().cpu())
    width = model.backbone.fc.in_features
    if not features:
        return np.zeros((0, width), np.float32), np.zeros((0, 2), np.float32)
    return torch.cat(features).numpy(), torch.cat(coords).numpy()


def fit_fold_statistics(model: ScanNet, data: FoldData, image_size: int, batch_size: int, seed: int) -> FeatureStatistics:
    """The fold's feature statistics: fitted on its training images, the threshold on its validation images."""
    train = data.train.sample(n=min(len(data.train), FIT_IMAGES), random_state=seed).sort_index()
    train_features, _ = features_and_coords(model, _loader(data, train, image_size, batch_size))
    validation_features, _ = features_and_coords(model, _loader(data, data.validation, image_size, batch_size))
    return fit_statistics(train_features, validation_features)


def outlier_scores(model: ScanNet, statistics: FeatureStatistics, scans: np.ndarray, image_indexes: list[str],
                   batch_size: int, seed: int) -> pd.DataFrame:
    """The OOD scores of every kind of outlier made of `scans` (N×S×S uint8), one row per outlier."""
    frames = []
    for kind, made in outliers(scans, seed).items():
        batches = [torch.from_numpy(made[i : i + batch_size, None]) for i in range(0, len(made), batch_size)]
        features, _ = features_and_coords(model, batches)
        frames.append(pd.DataFrame({"image_index": image_indexes, "kind": kind, "ood_score": statistics.scores(features)}))
    return pd.concat(frames, ignore_index=True)[OUTLIER_COLUMNS]


def _loader(data: FoldData, table: pd.DataFrame, image_size: int, batch_size: int) -> DataLoader:
    dataset = ScanDataset([data.paths[n] for n in table["image_index"]], np.zeros(len(table)), image_size)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)
