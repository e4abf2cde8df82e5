"""Data_Entry CSV → labels.parquet: the label table with its patient-grouped folds."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from clare_dist.atomic import atomic_path
from clare_dist.cxr14 import FOLD_SEED, N_FOLDS, label_table, read_data_entry
from clare_dist.runs import LABELS_FILE

log = logging.getLogger(__name__)


def prepare(data_entry: Path, out: Path, seed: int = FOLD_SEED) -> pd.DataFrame:
    """Read the NIH label file, keep images with at most 3 findings, assign the folds, and write
    `out/labels.parquet` (renamed into place when complete: an interrupted write leaves none)."""
    raw = read_data_entry(data_entry)
    table = label_table(raw, seed=seed)
    with atomic_path(out / LABELS_FILE) as partial:
        table.to_parquet(partial, index=False)
    log.info("%d of %d images kept (at most 3 findings), %d patients, %d folds", len(table), len(raw),
             table["patient_id"].nunique(), N_FOLDS)
    return table
