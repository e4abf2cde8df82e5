"""Training data: the label table's scans (found by `clare_dist.archive`), streamed through the decoder.

Scans are decoded one at a time by the same `preprocess_scan` the batch job and the API use,
so training sees exactly the pixels inference will see; nothing holds the archive in memory.
The paper doubles the training data with soft random affine copies; that is an index trick
here (items N..2N-1 are augmented copies of items 0..N-1), not extra files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from clare_dist.scans import DEFAULT_PREPROCESSING, ScanConfig, preprocess_scan

# The paper: "soft random affine transformations (i.e. 5 degrees of rotation and 3 degrees of shear)".
PAPER_AUGMENTATION = {"degrees": 5.0, "shear": 3.0}


class ScanDataset(Dataset):
    """(uint8 1×S×S scan, float32 target) pairs; with `augment`, twice as long, copies augmented."""

    def __init__(self, paths: Sequence[Path], targets: np.ndarray, image_size: int, augment: bool = False,
                 preprocessing: str = DEFAULT_PREPROCESSING):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = list(paths)
        self.targets = torch.tensor(np.asarray(targets, dtype=np.float32))
        self.config = ScanConfig(size=image_size, preprocessing=preprocessing)
        self.augment = augment
        self.transform = v2.RandomAffine(**PAPER_AUGMENTATION) if augment else None

    def __len__(self) -> int:
        return len(self.paths) * (2 if self.augment else 1)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = item % len(self.paths)
        scan = torch.from_numpy(preprocess_scan(self.paths[index], self.config))[None]
        if self.transform is not None and item >= len(self.paths):
            scan = self.transform(scan)
        return scan, self.targets[index]


def targets_for(table: pd.DataFrame, kind: str, reference_coords: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Training targets: the 5 class bits (baseline) or the reference coordinate (regressor)."""
    if kind == "bits":
        return table[["Ca", "Pa", "Pn", "Pl", "Ot"]].to_numpy(dtype=np.float32)
    if kind == "coords":
        if reference_coords is None:
            raise ValueError("coordinate targets need the references")
        return np.stack([reference_coords[c] for c in table["combination"]]).astype(np.float32)
    raise ValueError(f"unknown target kind {kind!r}; expected 'bits' or 'coords'")
