"""The lattice over a partition's points: which cells a query must scan to be answered exactly.

Each partition is a regular lattice of square cells, each cell one inverted list of an
`IndexIVFFlat` (its quantizer holds the cell centres, whose Voronoi cells are those squares).
Points are put in their cell directly (O(1) each) and FAISS is told which lists to scan. For
every cell we keep the bounding box of its points, so "no point of this cell is nearer than lb"
is a true lower bound, for border cells that collect outliers too, and empty cells (lb = ∞) are
never scanned. A partition below `GRID_MIN_CASES` (clare_dist.case_index.index) gets one cell:
that is brute force, and as fast there. Only numpy here; FAISS is in `search`.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK, BLOCK_FROM = 16, 4096  # a query box of more than BLOCK_FROM cells is pruned by 16×16 blocks first


class Grid:
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
    def fit(cls, xy: np.ndarray, cases_per_cell: int | None) -> Grid:
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
