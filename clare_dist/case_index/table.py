"""The case table: one row per known case (a labelled image and its predicted coordinates).

Every index is built from, saved as and loaded from this table, so it is checked here once:
the columns, their dtypes (coordinates as float32, what the search compares), known combinations and
unique ids. Its partitions, the rows of each ground-truth combination, are what the search runs on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clare_dist.errors import ClareError
from clare_dist.labels import COMBINATIONS

ALL_CASES = "all"  # the partition over every case, whatever its combination
COLUMNS: tuple[str, ...] = ("case_id", "path", "combination", "x", "y", "fold")


class CaseIndexError(ClareError, ValueError):
    """A case table or a saved index that cannot be used; the message says what to fix."""


class UnknownCaseError(ClareError, KeyError):
    """A case id that is not in the index."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def validated(cases: pd.DataFrame) -> pd.DataFrame:
    """The table with the index's columns and dtypes, or a CaseIndexError naming what is wrong."""
    missing = [c for c in COLUMNS if c not in cases.columns]
    if missing:
        raise CaseIndexError(f"the cases table lacks the columns {missing}; it needs {list(COLUMNS)}")
    empty = [c for c in COLUMNS if cases[c].isna().any()]
    if empty:
        raise CaseIndexError(f"the cases table has missing values in {empty}; every case needs all of {list(COLUMNS)}")
    unknown = sorted(set(map(str, pd.unique(cases["combination"]))) - set(COMBINATIONS))
    if unknown:
        raise CaseIndexError(f"unknown combinations {unknown[:5]} in the cases table; expected names from {list(COMBINATIONS)}")
    if not pd.api.types.is_integer_dtype(cases["fold"]):
        raise CaseIndexError(f"the fold column must hold integers (-1 when unknown); it has dtype {cases['fold'].dtype}")
    table = pd.DataFrame({
        "case_id": cases["case_id"].astype("string[pyarrow]"),
        "path": cases["path"].astype("string[pyarrow]"),
        "combination": cases["combination"].astype("string[pyarrow]"),
        "x": cases["x"].to_numpy(dtype=np.float32),  # what the search compares
        "y": cases["y"].to_numpy(dtype=np.float32),
        "fold": cases["fold"].to_numpy(dtype=np.int64),
    })
    if not np.isfinite(table[["x", "y"]].to_numpy()).all():
        raise CaseIndexError("the cases table has coordinates that are not finite float32 values (NaN, ±inf or > 3.4e38)")
    duplicated = table["case_id"][table["case_id"].duplicated()]
    if len(duplicated):
        raise CaseIndexError(f"{len(duplicated)} case ids occur more than once, e.g. {list(duplicated[:3])}; ids must be unique")
    return table


def codes(table: pd.DataFrame) -> np.ndarray:
    """Each case's combination as its number in COMBINATIONS."""
    return pd.Categorical(table["combination"], categories=COMBINATIONS).codes


def partition_rows(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Rows of every partition: all cases, then each combination present, in canonical order."""
    numbers = codes(table)
    partitions = {ALL_CASES: np.arange(len(table))}
    for code in np.unique(numbers):
        partitions[COMBINATIONS[code]] = np.flatnonzero(numbers == code)
    return partitions


def coordinates(table: pd.DataFrame) -> np.ndarray:
    """The table's N×2 float32 coordinates, shared by all its partitions."""
    return table[["x", "y"]].to_numpy(dtype=np.float32)
