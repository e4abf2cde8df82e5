"""Known cases from a screened labelled archive: each scan's predicted point with its ground truth.

The index must hold the coordinates the bundle's own regressor gives, so the cases are the batch
job's results on the labelled archive (one row per scan), joined to the label table by file
name. Scans that failed, or have no label, are left out.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from clare_dist.case_index.index import CaseIndex
from clare_dist.case_index.storage import write_index_into_bundle

log = logging.getLogger(__name__)


def cases_from_results(results: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The case table (`table.COLUMNS`) of the screened scans (`batch.read_results`) that have a label."""
    ok = results[results["status"] == "ok"].assign(image_index=lambda r: r["scan_id"].str.rsplit("/", n=1).str[-1])
    cases = ok.merge(labels[["image_index", "combination", "fold"]], on="image_index", suffixes=("_predicted", ""))
    if cases.empty:
        raise ValueError("no screened scan matches an image_index of the label table; check --labels and --archive")
    log.info("%d known cases (%d screened scans had no label)", len(cases), len(ok) - len(cases))
    return pd.DataFrame({
        "case_id": cases["image_index"], "path": cases["path"], "combination": cases["combination"],
        "x": cases["x"].astype(np.float32), "y": cases["y"].astype(np.float32), "fold": cases["fold"].astype(int),
    })


def build_case_index(bundle_path: str | os.PathLike, results: pd.DataFrame, labels: pd.DataFrame) -> int:
    """The labelled archive's coordinates become the bundle's index of known cases; returns how many."""
    cases = cases_from_results(results, labels)
    write_index_into_bundle(bundle_path, CaseIndex.build(cases))
    return len(cases)
