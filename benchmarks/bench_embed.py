"""Benchmark of archive embedding: the Ray Data job against a tight single-process loop.

DESIGN.md §3: the job's steady-state images/s must reach ≥ 1.0× a tight sequential loop
(decode + resize + ONNX Runtime at its best batch size) on the same machine; its fixed start-up
cost is reported apart. Both screen the same archive of 1024×1024 PNGs with the same ResNet50
bundle (untrained: throughput does not depend on the weights), from the page cache.

- Tight loop: one process, `screening.decode` then `runtime.run_regressor` per batch, for each
  batch size; the warm-up batch is not timed. Decode-only and ORT-only rates at the best batch
  size give the pipeline's ceilings: a sequential loop runs at 1/(t_dec + t_ort); perfect
  overlap at 1/max(t_dec, t_ort), but on a small machine ORT then loses the cores decoding
  takes, so the ceiling that counts is decode on some cores and single-threaded ORT on the rest.
- Ray Data job: `jobs.embed.run_embed` (decode tasks → ORT actor pool → rules/lookup tasks →
  Parquet, then report.html) on archives of n1 < n2 scans, each into a fresh output directory.
  steady = (n2 − n1) / (T2 − T1); start-up = T1 − n1 / steady. The first job after Ray starts
  (workers start, imports) is reported as the cold run.
- `--sweep` times a few resource variants. Profiling (`--profile on`, or by default when the job
  falls short of the loop) runs one more job at n2 with Ray Data's per-operator stats and a
  per-process CPU sampler, and times each stage in-process, to say where the time goes and
  which stage bounds throughput.

    python benchmarks/bench_embed.py --images 8 --skip-job        # the tight loop only, quickly
    python benchmarks/bench_embed.py                              # 256 scans, writes results/embed.json
    python benchmarks/bench_embed.py --sweep --profile on
    python benchmarks/bench_embed.py --skip-loop --loop-from benchmarks/results/embed.json \\
        --workers 2 --actor-cpus 0.5 --ort-threads 1 --out benchmarks/results/embed-2x1.json

Do not run it beside other heavy work: on a 2-core machine any other process moves the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

from common import DEFAULT_WORK, archive_of, machine, scan_files, start_work, warm_page_cache, write_json
from embed_job import job_seconds, measure_job, print_variants
from embed_loop import print_loop, tight_loop
from embed_profile import diagnose, print_profile, profile_job, stage_profile

log = logging.getLogger("bench_embed")

# Variants of --sweep, as changes to the command line's settings: the staged pipeline (the only
# one before issue 19; the notes, ../shared/notes/ray-2.60.md, saw it at 11.8 img/s on 2 cores,
# and with two 0.5-CPU actors of one ORT thread each at 17.9, the loop at 18.9) and batch sizes.
SWEEP = (
    {},
    {"pipeline": "staged"},
    {"pipeline": "staged", "workers": 2, "actor_cpus": 0.5, "ort_threads": 1},
    {"batch_size": 16},
    {"batch_size": 64},
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="scans in the (larger) archive, n2")
    parser.add_argument("--small", type=int, default=None, help="scans in the smaller archive, n1 (default n2/4)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="bundle, archives and outputs (reused)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--backbone", default="resnet50", help="the untrained model: resnet50, or resnet18 (with "
                        "--image-size 48, the demo's cheap model)")
    parser.add_argument("--index-cases", type=int, default=100_000, help="known cases in the bundle's index (0: none)")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32", help="tight loop batch sizes")
    parser.add_argument("--loop-threads", type=int, default=None, help="ORT threads of the tight loop (default ORT's)")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--loop-from", type=Path, default=None, help="take the tight loop's figures from an earlier embed.json")
    parser.add_argument("--skip-job", action="store_true")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default all)")
    job = parser.add_argument_group("job settings (jobs.embed.EmbedSettings)")
    job.add_argument("--batch-size", type=int, default=32)
    job.add_argument("--workers", type=int, default=1)
    job.add_argument("--actor-cpus", type=float, default=1.0)
    job.add_argument("--task-cpus", type=float, default=0.5)
    job.add_argument("--ort-threads", type=int, default=None)
    job.add_argument("--pipeline", choices=("auto", "fused", "staged"), default="auto")
    job.add_argument("--screen-cpus", type=float, default=1.0, help="CPUs of one fused task")
    parser.add_argument("--sweep", action="store_true", help="also time the variants in SWEEP")
    parser.add_argument("--repeats", type=int, default=1, help="job runs per size (median)")
    parser.add_argument("--profile", choices=("auto", "on", "off"), default="auto",
                        help="say where the job's time goes (auto: when the job falls short of the loop)")
    parser.add_argument("--progress-bars", action="store_true", help="keep Ray Data's progress bars")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/embed.json"))
    args = parser.parse_args()
    args.small = args.small or max(1, args.images // 4)
    if not args.skip_job and args.small >= args.images:
        parser.error(f"--small ({args.small}) must be below --images ({args.images})")
    return args


def run_jobs(args: argparse.Namespace, bundle: Path, archives: dict[int, Path], loop_rate: float | None) -> dict:
    """Connect (or start) Ray, time the cold run and each variant, optionally profile; shut down."""
    import ray
    import ray.data

    from jobs.cluster import connect
    from jobs.embed import EmbedSettings

    started = time.perf_counter()
    connect(None, args.num_cpus)
    result: dict = {"connect_s": time.perf_counter() - started, "cluster": ray.cluster_resources()}
    cpus = float(result["cluster"].get("CPU", os.cpu_count() or 1))
    try:
        ray.data.DataContext.get_current().enable_progress_bars = args.progress_bars
        base = EmbedSettings(batch_size=args.batch_size, workers=args.workers, actor_cpus=args.actor_cpus,
                             task_cpus=args.task_cpus, ort_threads=args.ort_threads, pipeline=args.pipeline,
                             screen_cpus=args.screen_cpus)
        print(f"\n== Ray Data job ({cpus:g} CPUs; connect {result['connect_s']:.1f} s) ==")
        cold = job_seconds(bundle, archives[args.small], args.work, base, args.small)
        result["cold_first_run"] = {"images": args.small, "seconds": cold}
        print(f"cold first run ({args.small} scans, workers starting): {cold:.1f} s")
        variants = []
        for change in SWEEP if args.sweep else ({},):
            settings = replace(base, **change)
            variants.append(measure_job(bundle, archives, args.work, settings, args.repeats))
            log.info("%s: steady %.2f img/s, start-up %.1f s", asdict(settings), variants[-1]["steady_img_s"],
                     variants[-1]["startup_s"])
        result["variants"] = variants
        steady = variants[0]["steady_img_s"]
        result["cold_first_run"]["startup_s"] = cold - args.small / steady if not math.isnan(steady) else float("nan")
        print_variants(variants, loop_rate)
        short = loop_rate is not None and not steady >= loop_rate  # NaN counts as short
        if args.profile == "on" or (args.profile == "auto" and short):
            print("\nprofiling one more job at n2" + (" (it falls short of the loop)" if short else ""))
            profile = stage_profile(bundle, scan_files(archives[args.images]), base, cpus)
            profile |= profile_job(bundle, archives[args.images], args.work, base, args.images, cpus)
            profile["diagnosis"] = diagnose(profile, steady, variants[0]["startup_s"], base)
            result["profile"] = profile
            print_profile(profile)
            print("\nwhere the time goes:\n  " + "\n  ".join(profile["diagnosis"]))
    finally:
        ray.shutdown()
    return result


def main() -> None:
    args = parse_args()
    bundle = start_work(args.work, args.image_size, args.index_cases, args.backbone)
    sizes = [args.images] if args.skip_job else [args.small, args.images]
    archives = {n: archive_of(n, args.work / f"archive-{n}", args.work / "pool-1024") for n in sizes}
    files = scan_files(archives[args.images])
    warm_page_cache(files)
    document: dict = {
        "benchmark": "archive embedding: Ray Data job (jobs.embed) vs a tight single-process loop",
        "target": "job steady-state img/s >= 1.0x the tight loop at its best batch size (DESIGN.md 3)",
        "machine": machine(), "bundle": str(bundle), "image_size": args.image_size, "index_cases": args.index_cases,
        "archive": {"images": args.images, "small": args.small, "scan_size": "1024x1024 PNG", "work": str(args.work)},
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    }

    loop = None
    if args.loop_from:
        loop = json.loads(args.loop_from.read_text())["tight_loop"]
        print(f"tight loop from {args.loop_from}: best {loop['best']['img_s']:.2f} img/s")
    elif not args.skip_loop:
        from clare_dist.bundle import load_bundle

        print(f"== tight loop: {len(files)} scans of 1024x1024, {args.backbone} @{args.image_size} ==")
        loop = tight_loop(files, load_bundle(bundle).onnx_path, args.image_size,
                          [int(b) for b in args.batch_sizes.split(",")], args.loop_threads)
        print_loop(loop)
    document["tight_loop"] = loop
    loop_rate = loop["best"]["img_s"] if loop else None

    if not args.skip_job:
        job = run_jobs(args, bundle, archives, loop_rate)
        document["job"] = job
        steady = job["variants"][0]["steady_img_s"]
        best = max(job["variants"], key=lambda v: -1 if math.isnan(v["steady_img_s"]) else v["steady_img_s"])
        summary = {"loop_img_s": loop_rate, "job_steady_img_s": steady, "job_startup_s": job["variants"][0]["startup_s"],
                   "cold_startup_s": job["cold_first_run"]["startup_s"], "best_variant": best["settings"],
                   "best_steady_img_s": best["steady_img_s"]}
        if loop_rate:
            summary |= {"ratio": steady / loop_rate, "best_ratio": best["steady_img_s"] / loop_rate,
                        "target_met": bool(steady / loop_rate >= 1.0)}
        document["summary"] = summary
        print("\n== summary ==")
        ratio = f" = {summary['ratio']:.2f}x the loop's {loop_rate:.2f} (target >= 1.0x)" if loop_rate else ""
        print(f"job steady state {steady:.2f} img/s{ratio}; start-up {summary['job_startup_s']:.1f} s warm, "
              f"{summary['cold_startup_s']:.1f} s cold")
        if len(job["variants"]) > 1:
            print(f"best variant {best['settings']}: {best['steady_img_s']:.2f} img/s")
    out = write_json(document, args.out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
