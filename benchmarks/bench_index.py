"""Benchmark of the case index (issue 4, item 6b; issue 19, item 5): build, start-up, latency and exactness.

For each size, a table of known cases is drawn like real predictions (around 26 reference points
with spread and confusion between them, plus a uniform background; ground truth in the paper's
Table 1 proportions), indexed, saved and loaded again. Then, for the lookup over all cases and
for the paper's per-combination lookup (the query's combination is that of its nearest
reference, as R1 would predict it):

- single queries, one call each: p50/p99 latency (wall clock, and the thread's CPU time, which
  is what the latency would be on an idle machine when other work shares the cores);
- batched queries: per-query time amortised over batches;
- exactness: ids and distances equal to numpy brute force (recall@k = 1.0);
- queries far outside the data (a corrupted scan's coordinates), timed like the others;
- for scale: one tiny numpy call (how loaded the machine is: ~1 us when idle), and how often the
  machine interrupts a running thread (`machine_noise.py`): what a single query's p99 can be here;
- with --grid, the uniform grid that the k-d tree was chosen over (`index_grid.py`), its single
  queries near and far and its exactness.

Start-up (build, save, load, first query) is reported apart from the steady state.

    nice -n 10 python benchmarks/bench_index.py --sizes 100000,1000000
    python benchmarks/bench_index.py            # 1M and 10M, writes benchmarks/results/index.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy

from clare_dist.case_index import LEAF_SIZE, CaseIndex
from clare_dist.labels import COMBINATIONS, TABLE1_COUNTS
from machine_noise import describe, interruptions

log = logging.getLogger("bench_index")
SPREAD = 0.04  # std of a prediction around its reference
CONFUSED = 0.2  # share of predictions near another combination's reference
BACKGROUND = 0.1  # share spread uniformly over [-0.1, 1.1]²


def references(seed: int = 0) -> np.ndarray:
    """26 points in [0.05, 0.95]², at least 0.08 apart (like the label autoencoder's, normalised)."""
    rng = np.random.default_rng(seed)
    points: list[np.ndarray] = []
    while len(points) < len(COMBINATIONS):
        p = rng.uniform(0.05, 0.95, 2)
        if all(np.hypot(*(p - q)) >= 0.08 for q in points):
            points.append(p)
    return np.array(points)


def predictions(n: int, refs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates float32 n×2, ground-truth combination numbers) drawn like real predictions."""
    share = np.array([TABLE1_COUNTS[name] for name in COMBINATIONS], dtype=float)
    truth = rng.choice(len(COMBINATIONS), n, p=share / share.sum())
    centre = np.where(rng.random(n) < CONFUSED, rng.integers(0, len(COMBINATIONS), n), truth)
    xy = refs[centre] + rng.normal(0.0, SPREAD, (n, 2))
    background = rng.random(n) < BACKGROUND
    xy[background] = rng.uniform(-0.1, 1.1, (int(background.sum()), 2))
    return xy.astype(np.float32), truth


def case_table(n: int, refs: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """The cases table, ids and paths built in Arrow (10M Python strings would dominate the run)."""
    xy, truth = predictions(n, refs, rng)
    numbers = pc.cast(pa.array(np.arange(n)), pa.string())
    ids = pc.binary_join_element_wise(pc.utf8_lpad(numbers, 8, "0"), "_000.png", "")
    paths = pc.binary_join_element_wise("images/", ids, "")
    return pd.DataFrame({
        "case_id": pd.Series(pd.arrays.ArrowStringArray(ids)),
        "path": pd.Series(pd.arrays.ArrowStringArray(paths)),
        "combination": pd.Categorical.from_codes(truth, categories=COMBINATIONS).astype(str),
        "x": xy[:, 0],
        "y": xy[:, 1],
        "fold": (np.arange(n) % 5).astype(np.int64),
    })


def rss_mib() -> float:
    """Resident memory now (Linux), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(values_ns: list[int]) -> dict[str, float]:
    us = np.array(values_ns) / 1e3
    return {"p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)), "mean_us": float(us.mean())}


def timed(calls: list[Callable[[], object]], per: int = 1) -> dict[str, dict[str, float]]:
    """Wall and thread-CPU time of each call, per query (`per` queries a call)."""
    wall, cpu = [], []
    for call in calls:
        w, c = time.perf_counter_ns(), time.thread_time_ns()
        call()
        cpu.append((time.thread_time_ns() - c) // per)
        wall.append((time.perf_counter_ns() - w) // per)
    return {"wall": percentiles(wall), "cpu": percentiles(cpu)}


def brute_force(points: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy: float64 distances of the float32 coordinates, ties by row; in chunks of queries."""
    p = points.astype(np.float64)
    if not len(p):
        return np.empty((len(q), 0), dtype=object), np.empty((len(q), 0), dtype=np.float32)
    out_ids, out_d = [], []
    for chunk in np.array_split(q.astype(np.float64), max(1, len(q) * len(p) // 20_000_000)):
        d2 = (p[None, :, 0] - chunk[:, None, 0]) ** 2 + (p[None, :, 1] - chunk[:, None, 1]) ** 2
        top = np.argpartition(d2, k, axis=1)[:, : k + 1] if len(p) > k + 1 else np.argsort(d2, axis=1)
        # argpartition may split ties at the k-th place: take every point tied with it, then sort.
        kth = np.take_along_axis(d2, top, axis=1).max(axis=1, keepdims=True)
        for row, limit in zip(d2, kth[:, 0]):
            near = np.flatnonzero(row <= limit)
            order = near[np.lexsort((near, row[near]))][:k]
            out_ids.append(ids[order])
            out_d.append(np.sqrt(row[order]).astype(np.float32))
    return np.array(out_ids, dtype=object), np.array(out_d)


def exactness(index: CaseIndex, table: pd.DataFrame, q: np.ndarray, names: np.ndarray, k: int) -> dict[str, float]:
    """Recall@k and exact (ordered ids and distances) agreement with brute force."""
    xy = table[["x", "y"]].to_numpy(np.float32)
    ids = table["case_id"].to_numpy(dtype=object)
    combination = table["combination"].to_numpy(dtype=object)
    result: dict[str, float] = {}
    for mode in ("all", "per_combination"):
        hits = exact = wanted = 0
        for name in dict.fromkeys(names) if mode == "per_combination" else [None]:
            where = np.flatnonzero(names == name) if name else np.arange(len(q))
            rows = np.flatnonzero(combination == name) if name else np.arange(len(table))
            expected_ids, expected_d = brute_force(xy[rows], ids[rows], q[where], k)
            found = index.nearest(q[where], name, k)
            for i in range(len(where)):
                hits += len(set(found.case_ids[i]) & set(expected_ids[i]))
                wanted += len(expected_ids[i])  # fewer than k where a combination has fewer cases
                exact += bool(np.array_equal(found.case_ids[i], expected_ids[i]) and np.array_equal(found.distances[i], expected_d[i]))
        result[f"{mode}_recall_at_{k}"] = hits / wanted
        result[f"{mode}_exact_share"] = exact / len(q)
    return result


def nearest_reference(q: np.ndarray, refs: np.ndarray) -> np.ndarray:
    d = ((q[:, None, :] - refs[None, :, :]) ** 2).sum(-1)
    return np.array(COMBINATIONS, dtype=object)[d.argmin(axis=1)]


def run_size(n: int, args: argparse.Namespace, refs: np.ndarray) -> dict:
    rng = np.random.default_rng(args.seed)
    table = case_table(n, refs, rng)
    q, _ = predictions(args.queries, refs, np.random.default_rng(args.seed + 1))
    names = nearest_reference(q, refs)
    k = args.k
    result: dict = {"cases": n, "queries": args.queries, "k": k, "batch": args.batch}

    before = rss_mib()
    started, cpu = time.perf_counter(), time.process_time()
    index = CaseIndex.build(table, leaf_size=args.leaf_size)
    result["build_s"] = time.perf_counter() - started
    result["build_cpu_s"] = time.process_time() - cpu
    result["index_memory_mib"] = rss_mib() - before

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        started = time.perf_counter()
        index.save(tmp)
        result["save_s"] = time.perf_counter() - started
        result["saved_mib"] = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20
        del index
        started = time.perf_counter()
        index = CaseIndex.load(tmp)
        result["load_s"] = time.perf_counter() - started
    started = time.perf_counter()
    index.nearest(q[0], names[0], k)
    result["first_query_after_load_ms"] = (time.perf_counter() - started) * 1e3

    for i in range(min(50, len(q))):  # warm caches and allocators before the steady state
        index.nearest(q[i], None, k)
        index.nearest(q[i], names[i], k)
    result["single_all"] = timed([lambda i=i: index.nearest(q[i], None, k) for i in range(len(q))])
    result["single_per_combination"] = timed([lambda i=i: index.nearest(q[i], names[i], k) for i in range(len(q))])
    starts = range(0, len(q) - args.batch + 1, args.batch)
    result["batched_all"] = timed([lambda s=s: index.nearest(q[s : s + args.batch], None, k) for s in starts], args.batch)
    result["batched_per_combination"] = timed(
        [lambda s=s: index.nearest_per_combination(q[s : s + args.batch], names[s : s + args.batch], k) for s in starts],
        args.batch,
    )
    far = far_queries(args.queries, np.random.default_rng(args.seed + 2))
    result["single_all_far_outside"] = timed([lambda i=i: index.nearest(far[i], None, k) for i in range(len(far))])
    result["single_per_combination_far_outside"] = timed([lambda i=i: index.nearest(far[i], names[i], k) for i in range(len(far))])
    result["numpy_small_call"] = timed([lambda: np.add(q[:2], 1.0) for _ in range(2000)])  # the machine's pace
    result["machine_noise"] = interruptions(2.0)  # the same minutes: what bounds the single queries' p99
    checked = np.concatenate([q[: args.recall_queries], far[: args.recall_queries // 4]])
    result["exactness"] = exactness(index, table, checked, nearest_reference(checked, refs), k)
    if args.grid:
        result["uniform_grid"] = uniform_grid(table, q, far, checked, k)
    return result


def far_queries(n: int, rng: np.random.Generator) -> np.ndarray:
    """Points far outside the cases' [-0.1, 1.1]² (not model outputs: a corrupted or OOD scan's), 1.5 to 1e4 away."""
    angle = rng.uniform(0, 2 * np.pi, n)
    distance = 10.0 ** rng.uniform(np.log10(1.5), 4, n)
    return (0.5 + distance[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)).astype(np.float32)


def uniform_grid(table: pd.DataFrame, q: np.ndarray, far: np.ndarray, checked: np.ndarray, k: int) -> dict:
    """The grid candidate over all cases: build, single queries near and far, and exactness."""
    from index_grid import UniformGrid

    xy = table[["x", "y"]].to_numpy(np.float32)
    started = time.perf_counter()
    grid = UniformGrid(xy)
    out: dict = {"build_s": time.perf_counter() - started}
    q64, far64 = q.astype(np.float64), far.astype(np.float64)
    out["single_all"] = timed([lambda i=i: grid.query(q64[i], k) for i in range(len(q))])
    out["single_all_far_outside"] = timed([lambda i=i: grid.query(far64[i], k) for i in range(len(far))])
    ids = table["case_id"].to_numpy(dtype=object)
    expected_ids, expected_d = brute_force(xy, ids, checked, k)
    exact = 0
    for i, point in enumerate(checked.astype(np.float64)):
        d2, rows = grid.query(point, k)
        exact += bool(np.array_equal(ids[rows], expected_ids[i]) and np.array_equal(np.sqrt(d2).astype(np.float32), expected_d[i]))
    out["all_exact_share"] = exact / len(checked)
    return out


def report(result: dict) -> None:
    n = result["cases"]
    print(f"\n== {n:,} cases ==")
    print(f"build {result['build_s']:.2f} s (CPU {result['build_cpu_s']:.2f} s), index memory +{result['index_memory_mib']:.0f} MiB, "
          f"saved {result['saved_mib']:.0f} MiB in {result['save_s']:.2f} s, load {result['load_s']:.2f} s, "
          f"first query after load {result['first_query_after_load_ms']:.2f} ms")
    rows = [(key, result[key]) for key in ("single_all", "single_per_combination", "batched_all", "batched_per_combination",
                                           "single_all_far_outside", "single_per_combination_far_outside", "numpy_small_call")]
    grid = result.get("uniform_grid")
    if grid:
        rows += [("grid: single_all", grid["single_all"]), ("grid: single_all_far", grid["single_all_far_outside"])]
    for key, figures in rows:
        wall, cpu = figures["wall"], figures["cpu"]
        print(f"{key:36s} wall p50 {wall['p50_us']:8.1f} us  p99 {wall['p99_us']:8.1f} us | "
              f"CPU p50 {cpu['p50_us']:8.1f} us  p99 {cpu['p99_us']:8.1f} us")
    print(describe(result["machine_noise"], result["single_all_far_outside"]["wall"]["p50_us"]), "(a far query's p50)")
    print("exactness vs numpy brute force (among the cases and far outside):", result["exactness"])
    if grid:
        print(f"grid: build {grid['build_s']:.2f} s, exact share {grid['all_exact_share']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated case counts")
    parser.add_argument("--queries", type=int, default=2000, help="single queries timed (and batched, in batches)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--recall-queries", type=int, default=200, help="queries among the cases checked against brute force (and a quarter as many far ones)")
    parser.add_argument("--leaf-size", type=int, default=LEAF_SIZE, help="the k-d trees' points per leaf (tuning)")
    parser.add_argument("--grid", action="store_true", help="also time the uniform grid candidate (index_grid.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="where the index is saved and loaded (default: the system's)")
    parser.add_argument("--out", default="benchmarks/results/index.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    refs = references()
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        results.append(run_size(n, args, refs))
        report(results[-1])
    document = {
        "benchmark": "case index (clare_dist.case_index)",
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform()},
        "structure": "k-d tree (scipy.spatial.cKDTree)",
        "scipy_version": scipy.__version__,
        "leaf_size": args.leaf_size,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
