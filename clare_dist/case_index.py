"""The index of known cases: exact nearest labelled images to a predicted 2-D coordinate.

The paper explains a decision by showing the k training images whose ground truth equals the
predicted combination and whose predicted coordinates lie nearest the scan's. The index keeps one
FAISS index per ground-truth combination (that lookup is then one search) and one over all cases.

Exact, and fast at 10 million cases
-----------------------------------
Brute force over 10M 2-D points costs ~50 ms a query; DESIGN §3 asks for < 1 ms with recall
1.0. So each partition is a regular lattice of square cells, each cell one inverted list of an
`IndexIVFFlat` (its quantizer holds the cell centres, whose Voronoi cells are those squares).
Points are put in their cell directly (O(1) each) and FAISS is told which lists to scan
(`search_preassigned`). For every cell we keep the bounding box of its points, so "no point of
this cell is nearer than lb" is a true lower bound, for border cells that collect outliers too,
and empty cells (lb = ∞) are never scanned. A partition below `GRID_MIN_CASES` gets one cell:
that is brute force, and as fast there.

A query scans every cell whose lower bound is ≤ R (first R = one cell width). Once k points are
found, the k-th squared distance d_k bounds the true one from above. The answer is final when
R² ≥ d_k·(1+m) (or every filled cell was scanned), since every unscanned point lies farther than
R; otherwise R² = d_k·(1+m) is scanned next, which is then final (d_k can only shrink). That
stopping rule is what makes the search exact, whatever the data's clustering.

FAISS computes float32 squared distances (relative error ~1e-7, which could swap two nearly
equal neighbours) and breaks ties in scan order. So FAISS proposes candidates, every point
within d_k·(1+m) (fetching more until the last one fetched lies beyond), and the answer is the
candidates ordered by the float64 distance of their stored float32 coordinates, equal distances
by insertion order (lower first). With m = 1e-5 ≫ the float32 error this equals numpy brute
force on the same coordinates, ties included. (`IndexFlatL2` is not used: in FAISS 1.15 a single
query goes through the ‖x‖² + ‖q‖² − 2x·q expansion, whose absolute error swamps the distances
between close neighbours; IVFFlat's scan subtracts coordinates first.)

With a GPU (faiss-gpu), the large partitions' indexes are copied to it and batches of at least
GPU_MIN_QUERIES queries are scanned there, under the same stopping rule; single queries stay on
the CPU, where a 2-D lookup is faster than a GPU round trip. The index is built on the CPU
either way (assigning a point to its cell is one division) and saved from the CPU copy.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa

from clare_dist.bundle import INDEX_DIR, MANIFEST_FILE, load_bundle
from clare_dist.labels import COMBINATION_INDEX, COMBINATIONS, LabelError

log = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
CASES_FILE = "cases.parquet"
META_FILE = "index.json"
ALL_CASES = "all"  # the partition over every case, whatever its combination
COLUMNS: tuple[str, ...] = ("case_id", "path", "combination", "x", "y", "fold")
DEFAULT_K = 9
GRID_MIN_CASES = 20_000  # below this one cell (brute force) is as fast as the lattice
CASES_PER_CELL = 8
BLOCK, BLOCK_FROM = 16, 4096  # a query box of more than BLOCK_FROM cells is pruned by 16×16 blocks first
RELATIVE_MARGIN = 1e-5  # ≫ the ~1e-7 relative error of FAISS's float32 squared distances
ABSOLUTE_MARGIN = 1e-30  # covers float32 underflow of tiny squared distances
GPU_MIN_QUERIES = 64  # fewer queries than this are answered faster on the CPU than by a GPU round trip
GPU_MAX_SELECT = 2048  # faiss-gpu's limit on k and on nprobe
_COMBINATION_NAMES = np.array(COMBINATIONS, dtype=object)


class CaseIndexError(ValueError):
    """A case table or a saved index that cannot be used; the message says what to fix."""


class UnknownCaseError(KeyError):
    """A case id that is not in the index."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class Neighbours:
    """The k' ≤ k nearest known cases of N query points, nearest first (arrays are N × k')."""

    case_ids: np.ndarray  # object
    combinations: np.ndarray  # object: the neighbours' ground truth
    distances: np.ndarray  # float32, Euclidean
    available: int  # cases in the searched partition
    complete: bool  # k' == k
    note: str | None  # why fewer than k were returned


class _Grid:
    """Square cells over a partition's points; each cell is one inverted list of its IVF index.

    Cell (i, j) holds the points with floor((x - x0)/h) = i and floor((y - y0)/h) = j, clamped to
    the lattice, so outliers land in border cells. `lo`/`hi` are the bounding boxes of each
    cell's points: the lower bounds that make the search exact. A 1×1 lattice is brute force.
    """

    def __init__(self, x0: float, y0: float, h: float, nx: int, ny: int) -> None:
        self.x0, self.y0, self.h, self.nx, self.ny = x0, y0, h, nx, ny
        self.origin, self.last_cell = np.array([x0, y0]), np.array([nx - 1, ny - 1])
        # Set by set_bounds: per cell and per block bounds, the points' extent, the filled cells.
        self.lo = self.hi = self.block_lo = self.block_hi = np.empty((0, 2), dtype=np.float32)
        self.data_lo = self.data_hi = np.zeros(2)
        self.filled = self.blocks_y = 0

    @property
    def nlist(self) -> int:
        return self.nx * self.ny

    @classmethod
    def fit(cls, xy: np.ndarray, cases_per_cell: int | None) -> _Grid:
        """A lattice with about `cases_per_cell` points a cell (None: one cell, brute force).

        The extent is the 0.05–99.95 % quantiles, so a few far outliers do not stretch the cells.
        """
        lo, hi = np.quantile(xy.astype(np.float64), [0.0005, 0.9995], axis=0)
        width, height = hi - lo
        if cases_per_cell is None or max(width, height) <= 0:
            return cls(float(lo[0]), float(lo[1]), float(max(width, height, 1.0)), 1, 1)
        n = len(xy)
        # The second term sizes cells along a line when the points have no area.
        h = max(math.sqrt(width * height * cases_per_cell / n), max(width, height) * cases_per_cell / n)
        return cls(float(lo[0]), float(lo[1]), float(h), max(1, math.ceil(width / h)), max(1, math.ceil(height / h)))

    def cells(self, xy: np.ndarray) -> np.ndarray:
        """The list number of each point (int64)."""
        ij = np.floor((xy.astype(np.float64) - self.origin) / self.h)
        ij = np.minimum(np.maximum(ij, 0), self.last_cell).astype(np.int64)
        return ij[:, 0] * self.ny + ij[:, 1]

    def centres(self) -> np.ndarray:
        i, j = np.divmod(np.arange(self.nlist), self.ny)
        return np.stack([self.x0 + (i + 0.5) * self.h, self.y0 + (j + 0.5) * self.h], axis=1).astype(np.float32)

    def set_bounds(self, xy: np.ndarray, cells: np.ndarray) -> None:
        """Bounding boxes of each cell's points and of each block of BLOCK×BLOCK cells (empty: ∞)."""
        self.lo, self.hi = _group_bounds(xy, cells, self.nlist)
        filled = np.flatnonzero(np.isfinite(self.lo[:, 0]))
        self.filled = len(filled)
        self.data_lo, self.data_hi = xy.min(axis=0).astype(np.float64), xy.max(axis=0).astype(np.float64)
        self.blocks_y = -(-self.ny // BLOCK)
        i, j = np.divmod(filled, self.ny)
        self.block_lo, self.block_hi = _group_bounds(
            np.concatenate([self.lo[filled], self.hi[filled]]), np.tile((i // BLOCK) * self.blocks_y + j // BLOCK, 2),
            -(-self.nx // BLOCK) * self.blocks_y,
        )

    def probes(self, q: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lists to scan per query: each cell whose points may lie within R of it (rows padded
        with −1), and whether that is every filled cell (the scan is then complete).

        The cells of the box [q − R, q + R] are tested one by one, or, where the box holds more
        than BLOCK_FROM cells (a query far outside the data), block by block first.
        """
        first = np.floor((q - radius[:, None] - self.origin) / self.h)
        last = np.floor((q + radius[:, None] - self.origin) / self.h)
        first = np.minimum(np.maximum(first, 0), self.last_cell).astype(np.int64)
        last = np.minimum(np.maximum(last, 0), self.last_cell).astype(np.int64)
        large = (last - first + 1).prod(axis=1) > BLOCK_FROM
        small = np.flatnonzero(~large)
        query, cell = _boxed(q[small], radius[small], first[small], last[small], self.ny, self.lo, self.hi)
        query = small[query]
        if large.any():
            big = np.flatnonzero(large)
            qb, block = _boxed(q[big], radius[big], first[big] // BLOCK, last[big] // BLOCK, self.blocks_y,
                               self.block_lo, self.block_hi)
            offset = np.arange(BLOCK * BLOCK)
            qb = np.repeat(big[qb], len(offset))
            i = np.repeat(block // self.blocks_y * BLOCK, len(offset)) + np.tile(offset // BLOCK, len(block))
            j = np.repeat(block % self.blocks_y * BLOCK, len(offset)) + np.tile(offset % BLOCK, len(block))
            inside = (i >= first[qb, 0]) & (i <= last[qb, 0]) & (j >= first[qb, 1]) & (j <= last[qb, 1])
            qb, c = qb[inside], i[inside] * self.ny + j[inside]
            near = _lower_bound2(q[qb], self.lo[c], self.hi[c]) <= radius[qb] ** 2
            query, cell = np.concatenate([query, qb[near]]), np.concatenate([cell, c[near]])
        kept = np.bincount(query, minlength=len(q))
        order = np.argsort(query, kind="stable")
        query, cell = query[order], cell[order]
        column = np.arange(len(query)) - np.repeat(np.cumsum(kept) - kept, kept)
        lists = np.full((len(q), max(1, int(kept.max(initial=0)))), -1, dtype=np.int64)
        lists[query, column] = cell
        return lists, kept == self.filled

    def to_json(self) -> dict[str, float | int]:
        return {"x0": self.x0, "y0": self.y0, "h": self.h, "nx": self.nx, "ny": self.ny}


class _Partition:
    """The cases of one combination (or all), searchable exactly.

    `rows` are the cases' row numbers in the table, increasing, so a FAISS id (the position in
    `rows`) orders like insertion; `xy` is the whole table's coordinates (shared, read by row).
    """

    def __init__(self, rows: np.ndarray, xy: np.ndarray, grid: _Grid, ivf: faiss.IndexIVFFlat) -> None:
        self.rows, self.xy, self.grid, self.ivf = rows, xy, grid, ivf
        self.gpu_ivf: Any = None
        grid.set_bounds(xy[rows], grid.cells(xy[rows]))

    @classmethod
    def build(cls, rows: np.ndarray, xy: np.ndarray, cases_per_cell: int | None) -> _Partition:
        points = np.ascontiguousarray(xy[rows], dtype=np.float32)
        grid = _Grid.fit(points, cases_per_cell)
        quantizer = faiss.IndexFlatL2(2)
        quantizer.add(grid.centres())
        ivf = faiss.IndexIVFFlat(quantizer, 2, grid.nlist)
        ivf.own_fields = True
        quantizer.this.disown()  # the IVF index owns (and frees) its quantizer now
        ids = np.arange(len(rows), dtype=np.int64)
        cells = grid.cells(points)  # FAISS reads these arrays through raw pointers: keep them referenced
        ivf.add_core(len(rows), faiss.swig_ptr(points), faiss.swig_ptr(ids), faiss.swig_ptr(cells))
        return cls(rows, xy, grid, ivf)

    def __len__(self) -> int:
        return len(self.rows)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k' = min(k, n) nearest of float32 queries: (float64 squared distances, local ids)."""
        n, k = len(self), min(k, len(self))
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), k)), np.zeros((len(q), k), dtype=np.int64)
        q64 = q.astype(np.float64)
        # One more than k shows whether the k-th is followed by near-ties; grows while it is.
        fetch = np.full(len(q), min(k + 1, n))
        # First one cell around the query; for a query outside the data, one cell beyond their edge
        # (no point is nearer than that edge: the reach beyond it is what doubles while too few are found).
        outside = np.maximum(np.maximum(self.grid.data_lo - q64, q64 - self.grid.data_hi), 0.0)
        edge = np.hypot(outside[:, 0], outside[:, 1])
        radius = edge + self.grid.h
        rounds: list[tuple[np.ndarray, np.ndarray]] = []
        pending = np.arange(len(q))
        while len(pending):
            rp, width = radius[pending], int(fetch[pending].max())
            lists, scanned_all = self.grid.probes(q64[pending], rp)
            distances, ids = self._scan(q[pending], width, lists)
            # What this round proved (see the module docstring); the rest is widened or fetched again.
            kth = np.where(ids[:, k - 1] >= 0, distances[:, k - 1].astype(np.float64), np.inf)
            threshold = kth * (1 + RELATIVE_MARGIN) + ABSOLUTE_MARGIN
            covered = scanned_all | (rp * rp >= threshold * (1 + RELATIVE_MARGIN))
            beyond = distances[np.arange(len(pending)), fetch[pending] - 1] > threshold
            exhausted = (ids[:, -1] < 0) | (fetch[pending] >= n)  # nothing more to fetch from these cells
            done = covered & (beyond | exhausted)
            rounds.append((pending[done], np.where(distances[done] <= threshold[done, None], ids[done], -1)))
            widen = ~covered
            radius[pending[widen]] = np.where(
                np.isfinite(threshold[widen]),
                np.sqrt(threshold[widen] * (1 + 2 * RELATIVE_MARGIN)),
                2 * rp[widen] - edge[pending[widen]],
            )
            again = covered & ~done
            fetch[pending[again]] = np.minimum(2 * fetch[pending[again]], n)
            pending = pending[~done]
        return self._rerank(q64, rounds, k)

    def _rerank(self, q64: np.ndarray, rounds: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Order each query's candidates (ids, −1 for none) by float64 distance, then id; keep k."""
        out_d = np.empty((len(q64), k))
        out_i = np.empty((len(q64), k), dtype=np.int64)
        for queries, ids in rounds:
            if not len(queries):
                continue
            delta = self.xy[self.rows[np.maximum(ids, 0)]].astype(np.float64) - q64[queries, None, :]
            d2 = delta[..., 0] * delta[..., 0] + delta[..., 1] * delta[..., 1]
            d2[ids < 0] = np.inf
            order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), d2), axis=-1)[:, :k]
            out_d[queries] = np.take_along_axis(d2, order, axis=1)
            out_i[queries] = np.take_along_axis(ids, order, axis=1)
        return out_d, out_i

    def _scan(self, q: np.ndarray, k: int, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """FAISS scan of the given lists of each query, on the GPU for large enough batches."""
        if self.gpu_ivf is not None and len(q) >= GPU_MIN_QUERIES and max(k, lists.shape[1]) <= GPU_MAX_SELECT:
            try:
                return _search_preassigned(self.gpu_ivf, q, k, lists)
            except RuntimeError as err:  # faiss-gpu limits vary by version; the CPU copy always answers
                log.warning("GPU search failed (%s); this partition searches on the CPU from now on", err)
                self.gpu_ivf = None
        return _search_preassigned(self.ivf, q, k, lists)


def _group_bounds(xy: np.ndarray, groups: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the min and max of its points (float32; +∞/−∞ for an empty group)."""
    order = np.argsort(groups, kind="stable")
    sorted_groups, sorted_xy = groups[order], xy[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    lo = np.full((count, 2), np.inf, dtype=np.float32)
    hi = np.full((count, 2), -np.inf, dtype=np.float32)
    if len(xy):
        lo[sorted_groups[starts]] = np.minimum.reduceat(sorted_xy, starts, axis=0)
        hi[sorted_groups[starts]] = np.maximum.reduceat(sorted_xy, starts, axis=0)
    return lo, hi


def _lower_bound2(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Squared distance from each point to its box (∞ for an empty box): no point inside is nearer."""
    gap = np.maximum(np.maximum(lo - q, q - hi), 0.0)
    return (gap * gap).sum(axis=1)


def _boxed(
    q: np.ndarray, radius: np.ndarray, first: np.ndarray, last: np.ndarray, ny: int, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(query, cell) pairs: the cells of each query's lattice box [first, last] within R of it."""
    wj = last[:, 1] - first[:, 1] + 1
    counts = (last[:, 0] - first[:, 0] + 1) * wj
    query = np.repeat(np.arange(len(q)), counts)
    slot = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cell = (first[query, 0] + slot // wj[query]) * ny + first[query, 1] + slot % wj[query]
    near = _lower_bound2(q[query], lo[cell], hi[cell]) <= radius[query] ** 2
    return query[near], cell[near]


@functools.lru_cache(maxsize=4096)
def _ivf_parameters(nprobe: int) -> faiss.SearchParametersIVF:
    """Per-call search parameters (an index's own nprobe is shared state); cached, they cost ~µs to make."""
    return faiss.SearchParametersIVF(nprobe=nprobe)


def _search_preassigned(index: Any, q: np.ndarray, k: int, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.ascontiguousarray(q, dtype=np.float32)
    lists = np.ascontiguousarray(lists, dtype=np.int64)
    coarse = np.zeros(lists.shape, dtype=np.float32)  # unused by IVFFlat
    distances = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    index.search_preassigned_c(
        len(q), faiss.swig_ptr(q), k, faiss.swig_ptr(lists), faiss.swig_ptr(coarse),
        faiss.swig_ptr(distances), faiss.swig_ptr(ids), False, _ivf_parameters(lists.shape[1]), None,
    )
    return distances, ids


class CaseIndex:
    """Known cases (labelled images with their predicted coordinates), searchable exactly.

    Made by `CaseIndex.build(cases)` or `CaseIndex.load(directory)`, then read-only; searches
    may run from several threads at once.
    """

    def __init__(self, table: pd.DataFrame, partitions: dict[str, _Partition], use_gpu: bool) -> None:
        self._table = table
        self._codes = _codes(table)
        ids = pa.array(table["case_id"].array)  # Arrow: compact at 10M, where Python strings are not
        self._case_ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        self._partitions = partitions
        self._rows_by_id: pd.Index | None = None
        if use_gpu:
            resources = faiss.StandardGpuResources()
            for partition in partitions.values():
                if partition.grid.nlist > 1:  # the large partitions; a GPU gains nothing on the rest
                    partition.gpu_ivf = faiss.index_cpu_to_gpu(resources, 0, partition.ivf)
            self._gpu_resources = resources  # the GPU indexes use it: keep it alive with them

    @classmethod
    def build(
        cls,
        cases: pd.DataFrame,
        use_gpu: bool | None = None,
        *,
        grid_min_cases: int = GRID_MIN_CASES,
        cases_per_cell: int = CASES_PER_CELL,
    ) -> CaseIndex:
        """Index a table with the columns `COLUMNS` (one row per labelled image).

        Partitions of at least `grid_min_cases` cases get a lattice of about `cases_per_cell`
        cases a cell (grid_min_cases=0 forces it everywhere, as the tests do); smaller ones one
        cell. `use_gpu` None means a GPU when FAISS sees one.
        """
        if cases_per_cell < 1:
            raise ValueError(f"cases_per_cell must be at least 1; got {cases_per_cell}")
        started = time.perf_counter()
        table = _validated(cases)
        gpu = _resolve_gpu(use_gpu)
        xy = table[["x", "y"]].to_numpy(dtype=np.float32)
        partitions = {
            name: _Partition.build(rows, xy, cases_per_cell if len(rows) >= max(grid_min_cases, 1) else None)
            for name, rows in _partition_rows(table).items()
        }
        index = cls(table, partitions, gpu)
        log.info(
            "indexed %d cases in %d combinations in %.1f s (%d partitions with a lattice), searching on the %s",
            len(table), len(partitions) - 1, time.perf_counter() - started,
            sum(p.grid.nlist > 1 for p in partitions.values()), "GPU" if gpu else "CPU",
        )
        return index

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
            empty = np.empty((len(q), 0))
            return Neighbours(
                empty.astype(object), empty.astype(object), empty.astype(np.float32), 0, False,
                f"no known cases have {combination}; there are no similar cases to show",
            )
        d2, ids = partition.search(q, k)
        rows = partition.rows[ids]
        case_ids = self._case_ids.take(rows.ravel()).to_numpy(zero_copy_only=False).astype(object).reshape(rows.shape)
        found = ids.shape[1]
        note = None
        if found < k:
            what = f"have {combination}" if combination else "are in the index"
            note = f"only {found} known cases {what}; showing all {found}"
        return Neighbours(
            case_ids, _COMBINATION_NAMES[self._codes[rows]], np.sqrt(d2).astype(np.float32),
            len(partition), found == k, note,
        )

    def nearest_per_combination(
        self, coords: np.ndarray, combinations: Sequence[str], k: int = DEFAULT_K
    ) -> list[Neighbours]:
        """For batch jobs: the k nearest cases of each point among its own combination's cases.

        Queries are grouped by combination and each group searched at once; the answer has one
        Neighbours (N = 1) per query, in query order.
        """
        q = _queries(coords)
        names = np.asarray(combinations, dtype=object)
        if names.shape != (len(q),):
            raise ValueError(f"need one combination per point: {len(q)} points, {names.shape} combinations")
        results: list[Neighbours] = [None] * len(q)  # type: ignore[list-item]  # every slot is filled below
        for name in dict.fromkeys(names):
            where = np.flatnonzero(names == name)
            group = self.nearest(q[where], name, k)
            for row, position in enumerate(where):
                results[position] = Neighbours(
                    group.case_ids[row : row + 1], group.combinations[row : row + 1],
                    group.distances[row : row + 1], group.available, group.complete, group.note,
                )
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

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `cases.parquet`, one FAISS file per partition and `index.json` into `directory`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._table.to_parquet(out / CASES_FILE, index=False)
        entries = []
        for name, partition in self._partitions.items():
            file = f"{ALL_CASES if name == ALL_CASES else f'c{COMBINATION_INDEX[name]:02d}'}.faiss"
            faiss.write_index(partition.ivf, str(out / file))  # always the CPU copy
            entries.append({"combination": name, "cases": len(partition), "file": file, "grid": partition.grid.to_json()})
        meta = {"format_version": INDEX_FORMAT_VERSION, "faiss_version": faiss.__version__, "cases": len(self), "partitions": entries}
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        log.info("saved the case index (%d cases) to %s", len(self), out)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, use_gpu: bool | None = None) -> CaseIndex:
        """Read what `save` wrote; every inconsistency found is named in one CaseIndexError."""
        root = Path(directory)

        def unusable(problems: list[str]) -> CaseIndexError:
            listed = "\n".join(f"  - {problem}" for problem in problems)
            return CaseIndexError(
                f"the case index at {root} is not usable:\n{listed}\n"
                "Rebuild it from the labelled archive (clare-dist embed --labels ... --build-index)."
            )

        missing = [f"{name} is missing" for name in (META_FILE, CASES_FILE) if not (root / name).is_file()]
        if missing:
            raise unusable(missing)
        try:
            meta = json.loads((root / META_FILE).read_text())
            table = _validated(pd.read_parquet(root / CASES_FILE))
        except (ValueError, OSError) as err:  # JSONDecodeError, pyarrow's errors and ours are ValueErrors
            raise unusable([str(err)]) from None
        if meta.get("format_version") != INDEX_FORMAT_VERSION:
            raise unusable([f"{META_FILE} has format_version {meta.get('format_version')!r}; this clare-dist reads {INDEX_FORMAT_VERSION}"])
        expected = _partition_rows(table)
        listed = {entry.get("combination"): entry for entry in meta.get("partitions", [])}
        problems = []
        if meta.get("cases") != len(table):
            problems.append(f"{META_FILE} says {meta.get('cases')} cases but {CASES_FILE} has {len(table)} rows")
        if set(listed) != set(expected):
            problems.append(f"{META_FILE} lists the partitions {sorted(map(str, listed))} but {CASES_FILE} has {sorted(expected)}")
        if problems:
            raise unusable(problems)

        xy = table[["x", "y"]].to_numpy(dtype=np.float32)
        partitions = {}
        for name, rows in expected.items():
            entry, file = listed[name], root / str(listed[name].get("file"))
            if not file.is_file():
                problems.append(f"{file.name} (partition {name}) is missing")
                continue
            try:
                index = faiss.read_index(str(file))
            except RuntimeError as err:
                problems.append(f"{file.name} (partition {name}) cannot be read: {str(err).splitlines()[0]}")
                continue
            try:
                grid = _Grid(**entry["grid"])
            except (KeyError, TypeError):
                problems.append(f"{META_FILE} has no usable grid for partition {name}")
                continue
            if index.ntotal != len(rows) or entry.get("cases") != len(rows):
                problems.append(
                    f"{file.name} holds {index.ntotal} cases and {META_FILE} says {entry.get('cases')}, but "
                    f"{CASES_FILE} has {len(rows)} for partition {name}"
                )
            elif not (isinstance(index, faiss.IndexIVFFlat) and index.nlist == grid.nlist):
                problems.append(f"{file.name} is not the {grid.nlist}-cell grid index that {META_FILE} describes")
            else:
                partitions[name] = _Partition(rows, xy, grid, index)
        if problems:
            raise unusable(problems)
        log.info("loaded the case index (%d cases) from %s", len(table), root)
        return cls(table, partitions, _resolve_gpu(use_gpu))


def index_dir(bundle_path: str | os.PathLike) -> Path:
    """Where a bundle keeps its case index."""
    return Path(bundle_path) / INDEX_DIR


def write_index_into_bundle(bundle_path: str | os.PathLike, index: CaseIndex) -> Path:
    """Put the index into a valid bundle and record it in the manifest; model_version is untouched.

    The index is written beside the bundle's files and renamed into place, so readers see the old
    index or the new one, never half of one; the manifest is replaced atomically after that.
    """
    bundle = load_bundle(bundle_path)  # only a valid bundle gets an index
    target = index_dir(bundle.path)
    tmp = bundle.path / f".{INDEX_DIR}.tmp-{uuid.uuid4().hex[:8]}"
    old = bundle.path / f".{INDEX_DIR}.old-{uuid.uuid4().hex[:8]}"
    try:
        index.save(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    manifest = dict(bundle.manifest)
    manifest["index"] = {
        "directory": INDEX_DIR,
        "cases": len(index),
        "combinations": index.combinations,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "faiss_version": faiss.__version__,
    }
    staged = bundle.path / f".{MANIFEST_FILE}.tmp-{uuid.uuid4().hex[:8]}"
    staged.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(staged, bundle.path / MANIFEST_FILE)
    if load_bundle(bundle.path).model_version != bundle.model_version:  # guards the contract, cheaply
        raise RuntimeError("writing the case index changed the bundle's model_version; this is a bug")
    log.info("wrote the case index (%d cases) into the bundle %s", len(index), bundle.path)
    return target


def _validated(cases: pd.DataFrame) -> pd.DataFrame:
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
        "x": cases["x"].to_numpy(dtype=np.float32),  # what FAISS stores and compares
        "y": cases["y"].to_numpy(dtype=np.float32),
        "fold": cases["fold"].to_numpy(dtype=np.int64),
    })
    if not np.isfinite(table[["x", "y"]].to_numpy()).all():
        raise CaseIndexError("the cases table has coordinates that are not finite float32 values (NaN, ±inf or > 3.4e38)")
    duplicated = table["case_id"][table["case_id"].duplicated()]
    if len(duplicated):
        raise CaseIndexError(f"{len(duplicated)} case ids occur more than once, e.g. {list(duplicated[:3])}; ids must be unique")
    return table


def _codes(table: pd.DataFrame) -> np.ndarray:
    """Each case's combination as its number in COMBINATIONS."""
    return pd.Categorical(table["combination"], categories=COMBINATIONS).codes


def _partition_rows(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Rows of every partition: all cases, then each combination present, in canonical order."""
    codes = _codes(table)
    partitions = {ALL_CASES: np.arange(len(table))}
    for code in np.unique(codes):
        partitions[COMBINATIONS[code]] = np.flatnonzero(codes == code)
    return partitions


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


def _resolve_gpu(use_gpu: bool | None) -> bool:
    gpus = faiss.get_num_gpus()
    if use_gpu and not gpus:
        raise ValueError("use_gpu=True but FAISS sees no GPU (faiss-cpu, or no CUDA device); install faiss-gpu or pass use_gpu=None")
    chosen = bool(gpus) if use_gpu is None else bool(use_gpu)
    log.info("case index searches on the %s (FAISS %s sees %d GPU(s))", "GPU" if chosen else "CPU", faiss.__version__, gpus)
    return chosen
