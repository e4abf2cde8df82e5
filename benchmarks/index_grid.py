"""A uniform grid for exact 2-D k-nearest search: the candidate that the k-d tree was measured against.

Not used by clare-dist (issue 19, item 5 kept the k-d tree); `bench_index.py --grid` times it
beside the index. The points' bounding box is cut into square cells, about `per_cell` points a
cell, stored contiguously (CSR: one sort by cell). A query scans rings of cells around its cell
(clamped into the box) until no unscanned cell can hold a point nearer than the k-th found: the
distance from the query to the box minus the scanned square bounds every unscanned point. The
box is the points' whole extent, which suits the benchmark's data (no far outliers); one far
outlier would stretch every cell, the weakness a tree does not have.
"""

from __future__ import annotations

import math

import numpy as np


class UniformGrid:
    def __init__(self, xy: np.ndarray, per_cell: int = 8) -> None:
        points = xy.astype(np.float64)
        self.lo, hi = points.min(axis=0), points.max(axis=0)
        width, height = np.maximum(hi - self.lo, 1e-12)
        self.h = math.sqrt(width * height * per_cell / len(points))
        self.nx, self.ny = max(1, math.ceil(width / self.h)), max(1, math.ceil(height / self.h))
        ij = np.minimum(((points - self.lo) / self.h).astype(np.int64), [self.nx - 1, self.ny - 1])
        cell = ij[:, 0] * self.ny + ij[:, 1]
        order = np.argsort(cell, kind="stable")
        self.ids, self.points = order, points[order]
        self.starts = np.searchsorted(cell[order], np.arange(self.nx * self.ny + 1))

    def query(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, ids) of the k nearest of one point, ties by id."""
        qx, qy = float(q[0]), float(q[1])
        ci = min(max(int((qx - self.lo[0]) // self.h), 0), self.nx - 1)
        cj = min(max(int((qy - self.lo[1]) // self.h), 0), self.ny - 1)
        best_d, best_i = np.empty(0), np.empty(0, dtype=np.int64)
        r = 0
        while True:
            i0, i1, j0, j1 = max(ci - r, 0), min(ci + r, self.nx - 1), max(cj - r, 0), min(cj + r, self.ny - 1)
            ring = [(i, j0, j1) for i in (i0, i1) if abs(i - ci) == r] if r else [(ci, cj, cj)]
            if r:
                ring += [(i, j, j) for i in range(i0 + (i0 == ci - r), i1 + 1 - (i1 == ci + r)) for j in (j0, j1) if abs(j - cj) == r]
            spans = [(self.starts[i * self.ny + a], self.starts[i * self.ny + b + 1]) for i, a, b in ring]
            if spans:
                take = np.concatenate([np.arange(s, e) for s, e in spans])
                d, i = _nearest(self.points[take], self.ids[take], qx, qy, k)
                best_d, best_i = _merge(best_d, best_i, d, i, k)
            covered = i0 == 0 and j0 == 0 and i1 == self.nx - 1 and j1 == self.ny - 1
            if covered or (len(best_d) == k and self._unscanned_bound2(qx, qy, i0, i1, j0, j1) > best_d[-1]):
                return best_d, best_i
            r += 1

    def _unscanned_bound2(self, qx: float, qy: float, i0: int, i1: int, j0: int, j1: int) -> float:
        """Squared distance from the query to the part of the box outside cells [i0, i1] × [j0, j1]."""
        x = [self.lo[0] + t * self.h for t in (0, i0, i1 + 1, self.nx)]
        y = [self.lo[1] + t * self.h for t in (0, j0, j1 + 1, self.ny)]
        strips = [(x[0], x[1], y[0], y[3]), (x[2], x[3], y[0], y[3]), (x[1], x[2], y[0], y[1]), (x[1], x[2], y[2], y[3])]
        bound = math.inf
        for xa, xb, ya, yb in strips:
            if xb > xa and yb > ya:
                dx, dy = max(xa - qx, qx - xb, 0.0), max(ya - qy, qy - yb, 0.0)
                bound = min(bound, dx * dx + dy * dy)
        return bound


def _nearest(points: np.ndarray, ids: np.ndarray, qx: float, qy: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    dx, dy = points[:, 0] - qx, points[:, 1] - qy
    d2 = dx * dx + dy * dy
    order = np.lexsort((ids, d2))[:k]
    return d2[order], ids[order]


def _merge(d1: np.ndarray, i1: np.ndarray, d2: np.ndarray, i2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d, i = np.concatenate([d1, d2]), np.concatenate([i1, i2])
    order = np.lexsort((i, d))[:k]
    return d[order], i[order]
