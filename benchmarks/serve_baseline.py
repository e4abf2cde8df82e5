"""bench_serve's in-process baselines: the same work as a request, in one process, and batched
ONNX Runtime alone, the denominator of the saturation target (run before Ray starts and again
after the load levels)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from common import ort_batched_throughput, ort_per_core_throughput, summary_ms

STAGES = ("decode", "regress", "lookup")  # the Server-Timing names of POST /v1/predict (also: chain, the total)


def in_process(bundle_path: Path, bodies: list[bytes], requests: int, batch_size: int, threads: int | None) -> dict:
    """The same work as a request, in this process: whole-chain latency, per-stage means, and
    batched ORT throughput on decoded scans."""
    from clare_dist.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    screened = screening_times(bundle_path, bodies, requests, threads)
    batched = batched_ort(bundle.onnx_path, bundle.image_size, bodies, batch_size)
    # One process decoding then running batched ORT: what the chain's CPUs could do at best.
    return screened | {"ort_batched": batched,
                       "decode_plus_batched_ort_img_s": 1e3 / (screened["stage_mean_ms"]["decode"] + batched["ms_per_image"])}


def screening_times(bundle_path: Path, bodies: list[bytes], requests: int, threads: int | None) -> dict:
    """`Screener.screen([png bytes])` per scan, the in-process work of one request: p50/p99 after
    a warm-up, and the mean of each stage timed apart."""
    from clare_dist.bundle import load_bundle
    from clare_dist.scans import ScanConfig
    from clare_dist.screening import Screener, decode, regress, screen_points

    bundle = load_bundle(bundle_path)
    screener = Screener(bundle, threads=threads)
    for body in bodies[:5]:  # warm-up: allocators, ORT's first runs, the index's caches
        screener.screen([body])
    latencies = []
    for i in range(requests):
        start = time.perf_counter()
        screener.screen([bodies[i % len(bodies)]])
        latencies.append(time.perf_counter() - start)

    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for i in range(requests):  # the same stages, timed one by one (Screener.screen runs exactly these)
        t0 = time.perf_counter()
        scan = decode(bodies[i % len(bodies)], ScanConfig(size=bundle.image_size))
        t1 = time.perf_counter()
        coords, ood_scores = regress(screener.session, scan[None], 1)
        t2 = time.perf_counter()
        screen_points(coords, ["scan"], bundle.references, screener.index, bundle.model_version, ood_scores=ood_scores)
        t3 = time.perf_counter()
        for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2)):
            stages[stage].append(seconds)

    return {"requests": requests, "ort_threads": threads, "latency": summary_ms(latencies),
            "stage_mean_ms": {stage: float(np.mean(values) * 1e3) for stage, values in stages.items()}}


def batched_ort(onnx_path: Path, image_size: int, bodies: list[bytes], batch_size: int) -> dict:
    """ONNX Runtime alone on batches of decoded scans, the best the machine does: the saturation
    target's denominator, whatever the regressor's own settings. Both ways of filling the cores are
    measured, one session with a thread per core and one single-thread session per core; `img_s`
    is the better."""
    from clare_dist.runtime import open_session
    from clare_dist.scans import ScanConfig
    from clare_dist.screening import decode

    scans = np.stack([decode(bodies[i % len(bodies)], ScanConfig(size=image_size)) for i in range(batch_size)])
    one = ort_batched_throughput(open_session(onnx_path, threads=os.cpu_count()), scans, batch_size, repeats=4)
    per_core = ort_per_core_throughput(onnx_path, scans, batch_size, repeats=2)
    best = max(("one_session", one), ("per_core_sessions", per_core), key=lambda named: named[1]["img_s"])
    return {"img_s": best[1]["img_s"], "ms_per_image": best[1]["ms_per_image"], "batch_size": batch_size,
            "best": best[0], "one_session": one, "per_core_sessions": per_core}


def print_in_process(base: dict) -> None:
    lat, st, ort = base["latency"], base["stage_mean_ms"], base["ort_batched"]
    print(f"in-process, one scan a call: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, mean {lat['mean_ms']:.1f} ms "
          f"(decode {st['decode']:.1f} + regress {st['regress']:.1f} + lookup {st['lookup']:.2f} ms)")
    print(f"batched ORT, batches of {ort['batch_size']}: {ort['img_s']:.1f} img/s, the better of one session on every core "
          f"({ort['one_session']['img_s']:.1f}) and a single-thread session per core ({ort['per_core_sessions']['img_s']:.1f}); "
          f"decode + batched ORT in one process: {base['decode_plus_batched_ort_img_s']:.1f} img/s")
