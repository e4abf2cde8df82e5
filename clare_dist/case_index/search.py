"""Exact k-nearest search of one partition (one combination's cases, or all) on a k-d tree.

The points are 2-D, where a k-d tree answers a query in O(log n) wherever the query lies: a point
far from every case costs what a point among them costs, which a lattice of cells (the FAISS
index this replaced, index format 1) could not promise. scipy's `cKDTree` does the search in C;
the points are stored in the tree's own leaf order (`order`), so one leaf's points lie together
in memory and a query touches a few cache lines instead of scattered rows of the table.

Exactness against brute force, ties included: the tree proposes m > k candidates; the answer is
the candidates ordered by the float64 squared distance of the stored float32 coordinates (the
same arithmetic as numpy brute force), equal distances by table row. That is final when the
m-th candidate lies beyond the k-th by more than the tree's own rounding could hide, since every
point not proposed lies at least as far as the m-th; otherwise m doubles (many points tied at
the k-th place).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

LEAF_SIZE = 16  # points per leaf: scipy's default; 8–32 differ by a few µs a query at 10M cases
RELATIVE_MARGIN = 1e-12  # ≫ the float64 rounding (≈1e-16) by which the tree's distance may differ from ours


class Partition:
    """The cases of one combination (or all), searchable exactly; read-only, safe to share between threads.

    `rows` are the cases' rows in the table, increasing. `order` lists the partition's points
    (positions in `rows`) in the tree's leaf order: it is what the index saves, and a tree built
    on points already in that order keeps it. Row numbers are int32 below 2³¹ cases (memory at 10M).
    """

    def __init__(self, rows: np.ndarray, xy: np.ndarray, order: np.ndarray, leaf_size: int = LEAF_SIZE) -> None:
        self.order, self.leaf_size = order.astype(_index_type(len(rows))), leaf_size
        self.tree_rows = rows[order].astype(_index_type(len(xy)))  # the table row of each point in tree order
        self.tree = cKDTree(xy[self.tree_rows], leafsize=leaf_size, balanced_tree=False)

    @classmethod
    def build(cls, rows: np.ndarray, xy: np.ndarray, leaf_size: int = LEAF_SIZE) -> Partition:
        """A tree over `xy[rows]`, its points put into leaf order (a first tree tells the order)."""
        order = cKDTree(xy[rows], leafsize=leaf_size, balanced_tree=False).indices
        return cls(rows, xy, order, leaf_size)

    def __len__(self) -> int:
        return len(self.order)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k' = min(k, n) nearest of float32 queries: (float64 squared distances, table rows)."""
        k = min(k, len(self))
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), k)), np.zeros((len(q), k), dtype=np.int64)
        if len(q) == 1:
            d2, rows = self.search_one(float(q[0, 0]), float(q[0, 1]), k)
            return np.array([d2]), np.array([rows], dtype=np.int64)
        return self._search_many(q.astype(np.float64), k)

    def search_one(self, x: float, y: float, k: int) -> tuple[list[float], list[int]]:
        """`search` of one point, k ≤ len(self), in Python floats: for the ten-odd candidates of a lone
        scan, numpy's per-call cost (~1 µs each, a dozen calls) is most of the query. The arithmetic
        is numpy's: (x' − x)² + (y' − y)² in float64, ties by table row."""
        n, fetch, q = len(self), min(k + 1, len(self)), (x, y)
        while True:
            distances, found = self.tree.query(q, k=fetch if fetch > 1 else [1])
            candidates = sorted(((px - x) * (px - x) + (py - y) * (py - y), row) for (px, py), row
                                in zip(self.tree.data[found].tolist(), self.tree_rows[found].tolist()))[:k]
            farthest = float(distances[-1]) ** 2  # the tree's m-th candidate: nothing unproposed is nearer
            if fetch == n or farthest * (1 - RELATIVE_MARGIN) > candidates[-1][0] * (1 + RELATIVE_MARGIN):
                return [d for d, _ in candidates], [row for _, row in candidates]
            fetch = min(2 * fetch, n)

    def _search_many(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        out_d = np.zeros((len(q), k))
        out_rows = np.zeros((len(q), k), dtype=np.int64)
        pending, fetch = np.arange(len(q)), min(k + 1, n)
        while len(pending):
            found = self.tree.query(q[pending], k=fetch)[1].reshape(len(pending), fetch)
            delta = self.tree.data[found] - q[pending, None, :]
            np.multiply(delta, delta, out=delta)
            d2 = delta[..., 0] + delta[..., 1]
            rows = self.tree_rows[found]
            ranked = np.lexsort((rows, d2), axis=-1)[:, :k]
            kth = np.take_along_axis(d2, ranked[:, -1:], axis=1)[:, 0]
            farthest = d2.max(axis=1)  # the tree's m-th candidate: nothing unproposed is nearer
            done = (fetch == n) | (farthest * (1 - RELATIVE_MARGIN) > kth * (1 + RELATIVE_MARGIN))
            out_d[pending[done]] = np.take_along_axis(d2[done], ranked[done], axis=1)
            out_rows[pending[done]] = np.take_along_axis(rows[done], ranked[done], axis=1)
            pending, fetch = pending[~done], min(2 * fetch, n)
        return out_d, out_rows


def _index_type(n: int) -> type[np.signedinteger]:
    return np.int32 if n < 2**31 else np.int64
