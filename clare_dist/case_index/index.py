"""`CaseIndex`: the known cases nearest to predicted points, exactly, by ground-truth combination.

The paper explains a decision by showing the k training images whose ground truth equals the
predicted combination and whose predicted coordinates lie nearest the scan's. The index keeps one
partition per ground-truth combination (that lookup is then one search) and one over all cases;
`nearest_per_combination` is the one place that groups many scans by their decision, for the
batch job, the API and `clare-dist predict` alike.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from clare_dist.case_index.search import LEAF_SIZE, Partition
from clare_dist.case_index.storage import read_index, write_index
from clare_dist.case_index.table import ALL_CASES, UnknownCaseError, codes, coordinates, partition_rows, validated
from clare_dist.labels import COMBINATION_INDEX, COMBINATIONS, MAX_FINDINGS, LabelError, combination_vector
from clare_dist.result import DEFAULT_K

log = logging.getLogger(__name__)

_COMBINATION_NAMES = np.array(COMBINATIONS, dtype=object)


@dataclass(frozen=True)
class Neighbours:
    """The k' ≤ k nearest known cases of N query points, nearest first (arrays are N × k')."""

    case_ids: np.ndarray  # object
    combinations: np.ndarray  # object: the neighbours' ground truth
    distances: np.ndarray  # float32, Euclidean
    available: int  # cases in the searched partition
    complete: bool  # k' == k
    note: str | None  # why fewer than k were returned

    @classmethod
    def none(cls, queries: int, note: str) -> Neighbours:
        """No cases for any of `queries` points, and why."""
        empty = np.empty((queries, 0))
        return cls(empty.astype(object), empty.astype(object), empty.astype(np.float32), 0, False, note)

    def row(self, i: int) -> Neighbours:
        """The neighbours of query i alone (N = 1)."""
        return Neighbours(self.case_ids[i : i + 1], self.combinations[i : i + 1], self.distances[i : i + 1],
                          self.available, self.complete, self.note)


class CaseIndex:
    """Known cases (labelled images with their predicted coordinates), searchable exactly.

    Made by `CaseIndex.build(cases)` or `CaseIndex.load(directory)`, then read-only; searches
    may run from several threads at once.
    """

    def __init__(self, table: pd.DataFrame, partitions: dict[str, Partition]) -> None:
        self._table = table
        self._codes = codes(table)
        self._codes_by_row = memoryview(np.ascontiguousarray(self._codes))  # indexed by row: Python ints
        self._case_ids = _Strings(pa.array(table["case_id"].array))
        self._partitions = partitions
        self._rows_by_id: pd.Index | None = None

    @classmethod
    def build(cls, cases: pd.DataFrame, *, leaf_size: int = LEAF_SIZE) -> CaseIndex:
        """Index a table with the columns `table.COLUMNS` (one row per labelled image).

        `leaf_size` is the k-d trees' points per leaf (the tests vary it; the answers do not).
        """
        if leaf_size < 1:
            raise ValueError(f"leaf_size must be at least 1; got {leaf_size}")
        started = time.perf_counter()
        table = validated(cases)
        xy = coordinates(table)
        partitions = {name: Partition.build(rows, xy, leaf_size) for name, rows in partition_rows(table).items()}
        log.info("indexed %d cases in %d combinations in %.1f s", len(table), len(partitions) - 1,
                 time.perf_counter() - started)
        return cls(table, partitions)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CaseIndex:
        """Read what `save` wrote (or an index of format 1); every inconsistency is named in one CaseIndexError."""
        table, partitions = read_index(directory)
        return cls(table, partitions)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `cases.parquet`, each partition's tree order and `index.json` into `directory`."""
        return write_index(directory, self._table, self._partitions)

    def __len__(self) -> int:
        return len(self._table)

    @property
    def combinations(self) -> dict[str, int]:
        """Known cases per ground-truth combination (those with at least one case), canonical order."""
        return {name: len(p) for name, p in self._partitions.items() if name != ALL_CASES}

    def nearest(self, coords: np.ndarray | Sequence[float], combination: str | None = None, k: int = DEFAULT_K) -> Neighbours:
        """The k nearest known cases of one point (shape (2,)) or N points (N×2); always N×k' arrays.

        With `combination`, only cases with that ground truth (the paper's similar cases);
        without, all cases.
        """
        q = _queries(coords)
        k = _check_k(k)
        if combination is not None and combination not in COMBINATION_INDEX:
            raise LabelError(f"{combination!r} is not a combination name; expected one of {list(COMBINATIONS)}")
        partition = self._partitions.get(combination or ALL_CASES)
        if partition is None:  # a valid combination without any known case
            return Neighbours.none(len(q), f"no known cases have {combination}; there are no similar cases to show")
        if len(q) == 1:  # a lone scan: Python lists for its few neighbours, a dozen numpy calls fewer
            d2, rows = partition.search_one(float(q[0, 0]), float(q[0, 1]), min(k, len(partition)))
            codes_by_row = self._codes_by_row
            case_ids = np.array([self._case_ids.get_many(rows)], dtype=object)
            names = np.array([[COMBINATIONS[codes_by_row[row]] for row in rows]], dtype=object)
            distances = np.sqrt(np.array([d2])).astype(np.float32)
        else:
            d2, rows = partition.search(q, k)
            case_ids, names = self._case_ids.take(rows), _COMBINATION_NAMES[self._codes[rows]]
            distances = np.sqrt(d2).astype(np.float32)
        found = case_ids.shape[1]
        note = None
        if found < k:
            what = f"have {combination}" if combination else "are in the index"
            note = f"only {found} known cases {what}; showing all {found}"
        return Neighbours(case_ids, names, distances, len(partition), found == k, note)

    def nearest_per_combination(
        self, coords: np.ndarray | Sequence[Sequence[float]], combinations: Sequence[str], k: int = DEFAULT_K
    ) -> list[Neighbours]:
        """The k nearest cases of each point among its own combination's cases (N = 1 each, in order).

        Points are grouped by combination, so each partition is searched once for all its points.
        A decision of more classes than any labelled image has (R4 can join the closest reference
        with recurrent classes into 4) gets no cases and a note saying so.
        """
        q = _queries(coords)
        names = np.asarray(combinations, dtype=object)
        if names.shape != (len(q),):
            raise ValueError(f"need one combination per point: {len(q)} points, {names.shape} combinations")
        results: list[Neighbours] = [None] * len(q)  # type: ignore[list-item]  # every slot is filled below
        for name in dict.fromkeys(names):
            where = np.flatnonzero(names == name)
            if name in COMBINATION_INDEX:
                group = self.nearest(q[where], name, k)
            else:
                combination_vector(name)  # a LabelError for what is no combination name at all
                group = Neighbours.none(len(where), f"no known case has {name}: labelled images have at most "
                                                    f"{MAX_FINDINGS} findings, so at most {MAX_FINDINGS} classes")
            for row, position in enumerate(where):
                results[position] = group.row(row)
        return results

    def case(self, case_id: str) -> dict[str, Any]:
        """path, combination, x, y and fold of a known case."""
        if self._rows_by_id is None:  # built on first use: hashing 10M ids takes seconds
            self._rows_by_id = pd.Index(self._table["case_id"])
        try:
            row = self._rows_by_id.get_loc(case_id)
        except KeyError:
            raise UnknownCaseError(f"no known case has the id {case_id!r}; ids are those of the labelled archive") from None
        record = self._table.iloc[row]
        return {
            "path": str(record["path"]),
            "combination": str(record["combination"]),
            "x": float(record["x"]),
            "y": float(record["y"]),
            "fold": int(record["fold"]),
        }


class _Strings:
    """A string column read by row from Arrow's two buffers: compact at 10M, where Python strings are
    not, and a handful of rows cost a few µs (Arrow's own take costs ~10 µs a call)."""

    def __init__(self, array: pa.Array | pa.ChunkedArray) -> None:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        array = array.cast(pa.large_string())
        _, offsets, data = array.buffers()
        self._offsets = np.frombuffer(offsets, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
        self._data = memoryview(data if data is not None else b"")
        self._offsets_by_row = memoryview(self._offsets)  # indexed by row: Python ints

    def get_many(self, rows: list[int]) -> list[str]:
        """The strings at a few rows, without numpy's per-call cost."""
        offsets, data = self._offsets_by_row, self._data
        return [str(data[offsets[row] : offsets[row + 1]], "utf-8") for row in rows]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The strings at `rows` (any shape), as an object array of that shape."""
        flat = rows.ravel()
        starts, ends = self._offsets[flat].tolist(), self._offsets[flat + 1].tolist()
        data = self._data
        return np.array([str(data[a:b], "utf-8") for a, b in zip(starts, ends)], dtype=object).reshape(rows.shape)


def _queries(coords: np.ndarray | Sequence[float]) -> np.ndarray:
    """Float32 N×2 query points from one point (2,) or N points (N×2)."""
    q = np.asarray(coords, dtype=np.float64)
    if q.shape == (2,):
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != 2:
        raise ValueError(f"coords must be one point (2,) or N points (N, 2); got shape {q.shape}")
    q32 = np.ascontiguousarray(q, dtype=np.float32)
    if not np.isfinite(q32).all():
        raise ValueError("coords must be finite float32 values")
    return q32


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    return int(k)
