"""fp32 against int8 regression throughput (issue 19, item 3), ResNet50 at 256 on this machine's CPU.

The benchmarks' ResNet50 bundle (`common.resnet50_bundle`: untrained, head rescaled so real scans
spread over the references) is quantised as `clare-dist export --int8` does
(`clare_dist.quantize.quantize_regressor`: static QDQ, calibrated on real scans of the shared
sample, checked on others), with the agreement floor off: an untrained network's decisions say
nothing about a trained one's (the trained check is `export --int8`'s own). Then both graphs
regress the same real scans in batches, alternating fp32 and int8 rounds so both see the same
minutes of a shared machine: one session with a thread per core, and one single-thread session.

    python benchmarks/bench_int8.py                 # writes benchmarks/results/int8.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from common import RESULTS_DIR, cxr_pngs, machine, start_work, write_json

from clare_dist import quantize
from clare_dist.bundle import load_bundle
from clare_dist.quantize import quantize_regressor
from clare_dist.runtime import open_session, run_regressor
from clare_dist.scans import preprocess_scan


def rounds(sessions: dict, scans: np.ndarray, batch_size: int, count: int) -> dict[str, list[float]]:
    """img/s of each session over `count` alternating rounds of all `scans`."""
    for session in sessions.values():
        run_regressor(session, scans[:batch_size], batch_size)
    out: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(count):
        for name, session in sessions.items():
            start = time.perf_counter()
            run_regressor(session, scans, batch_size)
            out[name].append(len(scans) / (time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/clare-bench"))
    parser.add_argument("--calibration", type=int, default=64, help="scans the activations' ranges come from")
    parser.add_argument("--scans", type=int, default=64, help="scans regressed each round (and checked)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "int8.json")
    args = parser.parse_args()
    bundle = load_bundle(start_work(args.workdir, 256, 0))
    files = cxr_pngs()
    config = bundle.scan_config()
    calibration = [preprocess_scan(p, config) for p in files[: args.calibration]]
    scans = np.stack([preprocess_scan(p, config) for p in files[args.calibration : args.calibration + args.scans]])
    int8 = bundle.path.parent / "regressor-int8.onnx"
    quantize.MIN_R4_AGREEMENT = 0.0  # untrained weights: the agreement is reported, not held to
    report = quantize_regressor(bundle.onnx_path, int8, calibration, list(scans), bundle.references, bundle.model_version)
    print(f"quantised in {report.seconds:.0f} s; untrained model: R4 agreement {report.r4_agreement:.3f} with fp32 on "
          f"{report.checked_scans} scans, max |Δcoord| {report.max_abs_coord_diff:.3f}")
    cores = os.cpu_count() or 1
    results = {}
    for threads in sorted({1, cores}):
        sessions = {"fp32": open_session(bundle.onnx_path, threads=threads, prefer_gpu=False),
                    "int8": open_session(int8, threads=threads, prefer_gpu=False)}
        measured = rounds(sessions, scans, args.batch_size, args.rounds)
        ratios = [b / a for a, b in zip(measured["fp32"], measured["int8"])]
        results[f"{threads}_threads"] = {name: {"img_s_min": min(v), "img_s_median": float(np.median(v)), "rounds": v}
                                         for name, v in measured.items()} | {
            "int8_over_fp32_min": min(ratios), "int8_over_fp32_median": float(np.median(ratios))}
        row = results[f"{threads}_threads"]
        print(f"{threads} thread(s), batch {args.batch_size}: fp32 {row['fp32']['img_s_min']:.1f} / "
              f"{row['fp32']['img_s_median']:.1f} img/s, int8 {row['int8']['img_s_min']:.1f} / "
              f"{row['int8']['img_s_median']:.1f} img/s (min / median); int8 ÷ fp32 per round "
              f"{row['int8_over_fp32_min']:.2f} / {row['int8_over_fp32_median']:.2f}")
    path = write_json({"quantization": report.manifest_entry() | {"seconds": report.seconds}, "throughput": results,
                       "batch_size": args.batch_size, "machine": machine()}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
