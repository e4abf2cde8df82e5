"""CXR14 label metadata: from NIH's Data_Entry file to the label table every run starts from.

The label table (`labels.parquet`) is the one place where the paper's data decisions live:
at most 3 findings, the 5-class vector, the combination, and the patient-grouped fold. Fold
assignment is a pure function of the label table and the seed, so a run can be reproduced
from the table alone.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from clare_dist.errors import ClareError
from clare_dist.labels import (
    CLASSES,
    COMBINATION_INDEX,
    MAX_FINDINGS,
    combination_name,
    findings_vector,
    parse_finding_labels,
)

log = logging.getLogger(__name__)

# NIH's label table; a synthetic archive writes it last, so an archive that has it is complete.
DATA_ENTRY_NAME = "Data_Entry_2017.csv"
# The header of NIH's Data_Entry_2017.csv: 9 names, 11 fields (two names hold a comma).
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
REQUIRED_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Labels", "Patient ID")
LABEL_COLUMNS: tuple[str, ...] = ("image_index", "patient_id", *CLASSES, "combination", "fold")
N_FOLDS = 5
FOLD_SEED = 0


class MetadataError(ClareError, ValueError):
    """A Data_Entry file that cannot be turned into a label table."""


@dataclass(frozen=True)
class FoldSplit:
    """Roles of the folds in one cross-validation round: fold k tests, fold k+1 validates."""

    test: int
    validation: int
    train: tuple[int, ...]


def fold_split(test_fold: int, n_folds: int = N_FOLDS) -> FoldSplit:
    """Fold k is the test fold, fold (k+1) mod n validation, the others train (DESIGN.md §1)."""
    if not 0 <= test_fold < n_folds:
        raise ValueError(f"fold must be between 0 and {n_folds - 1}; got {test_fold}")
    validation = (test_fold + 1) % n_folds
    train = tuple(f for f in range(n_folds) if f not in (test_fold, validation))
    return FoldSplit(test=test_fold, validation=validation, train=train)


def read_data_entry(path: str | os.PathLike) -> pd.DataFrame:
    """Read NIH's Data_Entry_2017(.csv|_v2020.csv)[.gz], keeping the columns the method needs.

    Raises MetadataError naming any missing column, so a site that exported its own file
    with other headers knows what to rename.
    """
    try:
        header = pd.read_csv(path, nrows=0)
    except FileNotFoundError as exc:
        raise MetadataError(f"label file not found: {path}") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise MetadataError(f"{path} is not a readable CSV file ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in header.columns]
    if missing:
        raise MetadataError(
            f"{path} lacks the column(s) {missing}; a CXR14 Data_Entry file has "
            f"{list(REQUIRED_COLUMNS)} (found {list(header.columns)[:12]})"
        )
    frame = pd.read_csv(
        path, usecols=list(REQUIRED_COLUMNS), dtype={"Image Index": str, "Finding Labels": str}, index_col=False
    )
    empty = frame[list(REQUIRED_COLUMNS)].isna().any(axis=1)
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy())[:5] + 2).tolist()
        raise MetadataError(f"{path} has empty required cells on line(s) {rows} (line 1 is the header)")
    duplicated = frame["Image Index"].duplicated()
    if duplicated.any():
        names = frame.loc[duplicated, "Image Index"].head(5).tolist()
        raise MetadataError(f"{path} lists the same image more than once, e.g. {names}")
    return frame


def label_table(data_entry: pd.DataFrame, seed: int = FOLD_SEED, n_folds: int = N_FOLDS) -> pd.DataFrame:
    """The label table: images with at most 3 findings, their 5-bit vector, combination and fold."""
    unique_labels = data_entry["Finding Labels"].unique()
    parsed = {text: parse_finding_labels(text) for text in unique_labels}
    n_findings = data_entry["Finding Labels"].map(lambda t: len(parsed[t]))
    kept = data_entry[n_findings <= MAX_FINDINGS]
    log.info("kept %d of %d images with at most %d findings", len(kept), len(data_entry), MAX_FINDINGS)

    vectors = {text: findings_vector(findings) for text, findings in parsed.items()}
    bits = np.stack([vectors[t] for t in kept["Finding Labels"]]) if len(kept) else np.zeros((0, 5), np.int8)
    table = pd.DataFrame({"image_index": kept["Image Index"].to_numpy(), "patient_id": kept["Patient ID"].to_numpy()})
    table["patient_id"] = table["patient_id"].astype(np.int64)
    for i, code in enumerate(CLASSES):
        table[code] = bits[:, i].astype(np.int8)
    table["combination"] = [combination_name(v) for v in bits]
    table["fold"] = assign_folds(table, seed=seed, n_folds=n_folds)
    return table[list(LABEL_COLUMNS)]


def assign_folds(table: pd.DataFrame, seed: int = FOLD_SEED, n_folds: int = N_FOLDS) -> np.ndarray:
    """Patient-grouped folds stratified on the 26-way combination (StratifiedGroupKFold)."""
    n_patients = table["patient_id"].nunique()
    if n_patients < n_folds:
        raise MetadataError(f"{n_folds} folds need at least {n_folds} patients; the label file has {n_patients}")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    y = table["combination"].map(COMBINATION_INDEX).to_numpy()
    folds = np.full(len(table), -1, dtype=np.int8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for fold, (_, test_idx) in enumerate(splitter.split(np.zeros(len(table)), y, groups=table["patient_id"])):
            folds[test_idx] = fold
    for warning in caught:
        log.info("fold assignment: %s", warning.message)
    return folds


def combination_counts(table: pd.DataFrame) -> pd.Series:
    """Images per combination, largest first (the paper's Table 1 for the full file)."""
    counts = table["combination"].value_counts()
    order = sorted(counts.index, key=lambda name: (-counts[name], COMBINATION_INDEX.get(name, len(COMBINATION_INDEX))))
    return counts.loc[order].rename("count")


def format_counts_table(counts: pd.Series, columns: int = 4) -> str:
    """Combination counts laid out in columns, like the paper's Table 1."""
    cells = [f"{name:<11}{count:>8,}" for name, count in counts.items()]
    rows = -(-len(cells) // columns)
    lines = []
    for r in range(rows):
        lines.append("   ".join(cells[c * rows + r] for c in range(columns) if c * rows + r < len(cells)))
    total = f"{len(counts)} combinations, {int(counts.sum()):,} images"
    return "\n".join(lines + [total])
