"""Exact k-nearest search of one partition (one combination's cases, or all), on FAISS.

A query scans every cell whose lower bound is ≤ R (first R = one cell width; the cells and their
bounds are `grid.Grid`'s). Once k points are found, the k-th squared distance d_k bounds the true
one from above. The answer is final when R² ≥ d_k·(1+m) (or every filled cell was scanned),
since every unscanned point lies farther than R; otherwise R² = d_k·(1+m) is scanned next, which
is then final (d_k can only shrink). That stopping rule is what makes the search exact, whatever
the data's clustering. FAISS is told which lists to scan (`search_preassigned`).

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
import logging
from collections.abc import Iterable
from typing import Any

import faiss
import numpy as np

from clare_dist.case_index.grid import Grid

log = logging.getLogger(__name__)

RELATIVE_MARGIN = 1e-5  # ≫ the ~1e-7 relative error of FAISS's float32 squared distances
ABSOLUTE_MARGIN = 1e-30  # covers float32 underflow of tiny squared distances
GPU_MIN_QUERIES = 64  # fewer queries than this are answered faster on the CPU than by a GPU round trip
GPU_MAX_SELECT = 2048  # faiss-gpu's limit on k and on nprobe


class Partition:
    """The cases of one combination (or all), searchable exactly.

    `rows` are the cases' row numbers in the table, increasing, so a FAISS id (the position in
    `rows`) orders like insertion; `xy` is the whole table's coordinates (shared, read by row).
    """

    def __init__(self, rows: np.ndarray, xy: np.ndarray, grid: Grid, ivf: faiss.IndexIVFFlat) -> None:
        self.rows, self.xy, self.grid, self.ivf = rows, xy, grid, ivf
        self.gpu_ivf: Any = None
        grid.set_bounds(xy[rows], grid.cells(xy[rows]))

    @classmethod
    def build(cls, rows: np.ndarray, xy: np.ndarray, cases_per_cell: int | None) -> Partition:
        points = np.ascontiguousarray(xy[rows], dtype=np.float32)
        grid = Grid.fit(points, cases_per_cell)
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


def resolve_gpu(use_gpu: bool | None) -> bool:
    """Whether to search on a GPU: `use_gpu` None means where FAISS sees one; True without one is refused."""
    gpus = faiss.get_num_gpus()
    if use_gpu and not gpus:
        raise ValueError("use_gpu=True but FAISS sees no GPU (faiss-cpu, or no CUDA device); install faiss-gpu or pass use_gpu=None")
    chosen = bool(gpus) if use_gpu is None else bool(use_gpu)
    log.info("case index searches on the %s (FAISS %s sees %d GPU(s))", "GPU" if chosen else "CPU", faiss.__version__, gpus)
    return chosen


def copy_to_gpu(partitions: Iterable[Partition]) -> Any:
    """Give the large partitions a copy of their index on GPU 0; the returned FAISS resources are
    what those copies run on, so the caller keeps them as long as the partitions."""
    resources = faiss.StandardGpuResources()
    for partition in partitions:
        if partition.grid.nlist > 1:  # the large partitions; a GPU gains nothing on the rest
            partition.gpu_ivf = faiss.index_cpu_to_gpu(resources, 0, partition.ivf)
    return resources


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
