"""Benchmark of archive embedding: the Ray Data job against a tight single-process loop.

DESIGN.md §3: the job's steady-state images/s must reach ≥ 1.0× a tight sequential loop
(decode + resize + ONNX Runtime at its best batch size) on the same machine; its fixed start-up
cost is reported apart. Both screen the same archive of 1024×1024 PNGs with the same ResNet50
bundle (untrained: throughput does not depend on the weights), from the page cache.

- Tight loop: one process, `screening.decode` then `export.run_regressor` per batch, for each
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
import pickle
import shutil
import statistics
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import Self

import numpy as np
from common import (
    DEFAULT_WORK,
    CpuSampler,
    archive_of,
    machine,
    ort_batched_throughput,
    resnet50_bundle,
    scan_files,
    warm_page_cache,
    write_json,
)

log = logging.getLogger("bench_embed")

# Resource variants of --sweep, as changes to the command line's settings. The notes
# (../shared/notes/ray-2.60.md) saw a plain pipeline at 11.8 img/s on 2 cores and two 0.5-CPU
# actors with one ORT thread each at 17.9 (the loop: 18.9).
SWEEP = (
    {},
    {"ort_threads": 1},
    {"workers": 2, "actor_cpus": 0.5, "ort_threads": 1},
    {"batch_size": 16},
    {"task_cpus": 0.25},
)


# --- the tight loop ---------------------------------------------------------------------------


def tight_loop(files: list[Path], onnx_path: Path, image_size: int, batch_sizes: list[int],
               threads: int | None) -> dict:
    """Sequential decode + ORT over the archive for each batch size; the best one, and the
    decode-only and ORT-only rates that bound what a pipeline can reach."""
    from clare_dist.runtime import open_session

    session = open_session(onnx_path, threads=threads)
    runs = []
    for batch_size in batch_sizes:
        _loop_pass(session, files[:batch_size], image_size, batch_size)  # warm-up, not timed
        runs.append(_loop_pass(session, files, image_size, batch_size))
        r = runs[-1]
        print(f"  batch {batch_size:3d}: {r['img_s']:6.2f} img/s   (decode {r['decode_ms']:5.1f} ms/img, "
              f"ORT {r['ort_ms']:5.1f} ms/img)")
    best = max(runs, key=lambda r: r["img_s"])
    ort_one = _ort_one_thread(onnx_path, files, image_size, best["batch_size"])
    return {"threads": threads, "runs": runs, "best": best, "ort_1thread": ort_one,
            "ceilings": _ceilings(best, ort_one, os.cpu_count() or 1)}


def _loop_pass(session, files: list[Path], image_size: int, batch_size: int) -> dict:
    """One timed pass over `files`: wall time, and the part spent decoding and in ORT."""
    from clare_dist.runtime import run_regressor
    from clare_dist.scans import ScanConfig
    from clare_dist.screening import decode

    t_decode = t_ort = 0.0
    start = time.perf_counter()
    for i in range(0, len(files), batch_size):
        t0 = time.perf_counter()
        batch = np.stack([decode(path, ScanConfig(size=image_size)) for path in files[i : i + batch_size]])
        t1 = time.perf_counter()
        run_regressor(session, batch, batch_size=batch_size)
        t2 = time.perf_counter()
        t_decode, t_ort = t_decode + t1 - t0, t_ort + t2 - t1
    wall = time.perf_counter() - start
    n = len(files)
    return {"batch_size": batch_size, "images": n, "seconds": wall, "img_s": n / wall,
            "decode_ms": t_decode / n * 1e3, "ort_ms": t_ort / n * 1e3,
            "decode_only_img_s": n / t_decode, "ort_only_img_s": n / t_ort}


def _ort_one_thread(onnx_path: Path, files: list[Path], image_size: int, batch_size: int) -> dict:
    """ORT with one intra-op thread at the best batch size: what one core does while the others
    decode (the split a pipeline on a few cores can use)."""
    from clare_dist.runtime import open_session
    from clare_dist.scans import ScanConfig
    from clare_dist.screening import decode

    count = max(batch_size, min(len(files), 2 * batch_size))
    scans = np.stack([decode(files[i % len(files)], ScanConfig(size=image_size)) for i in range(count)])
    return ort_batched_throughput(open_session(onnx_path, threads=1), scans, batch_size, repeats=1)


def _ceilings(best: dict, ort_one: dict, cpus: int) -> dict:
    """img/s a decode → ORT pipeline could reach, from the loop's own stage times."""
    t_dec, t_ort, t_ort1 = best["decode_ms"] / 1e3, best["ort_ms"] / 1e3, ort_one["ms_per_image"] / 1e3
    # d cores decoding, the other cpus − d running one single-threaded ORT each, all at full speed.
    split = max((min(d / t_dec, (cpus - d) / t_ort1), d) for d in range(1, cpus)) if cpus > 1 else (0.0, 0)
    return {
        "sequential_img_s": 1 / (t_dec + t_ort),
        "perfect_overlap_img_s": 1 / max(t_dec, t_ort),
        "split_cores_img_s": split[0],
        "split_cores_decode_cores": split[1],
        "cpus": cpus,
    }


def print_loop(loop: dict) -> None:
    best, ceilings, one = loop["best"], loop["ceilings"], loop["ort_1thread"]
    rate = best["img_s"]
    print(f"best: batch {best['batch_size']} at {rate:.2f} img/s; decode only {best['decode_only_img_s']:.1f} img/s, "
          f"ORT only {best['ort_only_img_s']:.1f} img/s ({loop['threads'] or 'default'} threads), "
          f"ORT 1 thread {one['img_s']:.1f} img/s")
    print(f"pipeline ceilings: sequential {ceilings['sequential_img_s']:.1f} img/s; perfect overlap "
          f"1/max(t_dec, t_ort) {ceilings['perfect_overlap_img_s']:.1f} ({ceilings['perfect_overlap_img_s'] / rate:.2f}x); "
          f"decoding on {ceilings['split_cores_decode_cores']} core(s), 1-thread ORT on each of the other "
          f"{ceilings['cpus'] - ceilings['split_cores_decode_cores']} {ceilings['split_cores_img_s']:.1f} "
          f"({ceilings['split_cores_img_s'] / rate:.2f}x)")


# --- the Ray Data job -------------------------------------------------------------------------


def job_seconds(bundle: Path, archive: Path, work: Path, settings, n: int) -> float:
    """Wall time of one run_embed into a fresh output directory (removed afterwards)."""
    from jobs.embed import run_embed

    out = work / "embed-out" / uuid.uuid4().hex[:8]
    start = time.perf_counter()
    results = run_embed(bundle, archive, out, settings)
    seconds = time.perf_counter() - start
    ok = int((results["status"] == "ok").sum())
    if len(results) != n or ok != n:
        log.warning("the job left %d rows (%d ok) for %d scans", len(results), ok, n)
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def measure_job(bundle: Path, archives: dict[int, Path], work: Path, settings, repeats: int) -> dict:
    """Steady state and start-up of one setting from runs at two archive sizes (median of repeats)."""
    (n1, small), (n2, large) = sorted(archives.items())
    t1 = statistics.median(job_seconds(bundle, small, work, settings, n1) for _ in range(repeats))
    t2 = statistics.median(job_seconds(bundle, large, work, settings, n2) for _ in range(repeats))
    steady = (n2 - n1) / (t2 - t1) if t2 > t1 else float("nan")
    return {"settings": asdict(settings), "n1": n1, "n2": n2, "t1_s": t1, "t2_s": t2, "steady_img_s": steady,
            "startup_s": t1 - n1 / steady if not math.isnan(steady) else float("nan"), "end_to_end_img_s": n2 / t2}


def print_variants(variants: list[dict], loop_rate: float | None) -> None:
    print(f"\n{'batch':>5} {'workers':>7} {'actor':>5} {'task':>5} {'ort':>4} | {'T(n1) s':>8} {'T(n2) s':>8} | "
          f"{'steady img/s':>12} {'vs loop':>7} {'start-up s':>10} {'n2/T img/s':>10}")
    for v in variants:
        s = v["settings"]
        ratio = f"{v['steady_img_s'] / loop_rate:6.2f}x" if loop_rate else "     -"
        print(f"{s['batch_size']:5d} {s['workers']:7d} {s['actor_cpus']:5.2f} {s['task_cpus']:5.2f} "
              f"{s['ort_threads'] or '-'!s:>4} | {v['t1_s']:8.1f} {v['t2_s']:8.1f} | {v['steady_img_s']:12.2f} "
              f"{ratio:>7} {v['startup_s']:10.1f} {v['end_to_end_img_s']:10.2f}")


# --- profiling the job ------------------------------------------------------------------------


class StatsCapture(logging.Handler):
    """Collects the per-operator stats Ray Data logs at the end of each execution (with
    DataContext.enable_auto_log_stats), since run_embed does not return its dataset."""

    LOGGER = "ray.data._internal.execution.streaming_executor"

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Operator" in message and ("Remote wall time" in message or "Tasks executed" in message):
            self.texts.append(message)

    def __enter__(self) -> Self:
        import ray.data

        context = ray.data.DataContext.get_current()
        self.previous = context.enable_auto_log_stats
        context.enable_auto_log_stats = True
        logger = logging.getLogger(self.LOGGER)
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        import ray.data

        ray.data.DataContext.get_current().enable_auto_log_stats = self.previous
        logging.getLogger(self.LOGGER).removeHandler(self)


def stage_profile(bundle_path: Path, files: list[Path], settings, cpus: float) -> dict:
    """Each stage of the job timed in this process on one batch (the job's own functions), the
    batch's size as Ray ships it, and which stage bounds throughput with these resources."""
    import pandas as pd

    from clare_dist.batch import decode_batch, finish_batch
    from clare_dist.scans import ScanConfig
    from clare_dist.bundle import load_bundle
    from clare_dist.screening import bundled_index
    from jobs.embed import Regressor

    bundle = load_bundle(bundle_path)
    paths = [str(files[i % len(files)]) for i in range(settings.batch_size)]
    batch = {"scan_id": np.array([Path(p).name for p in paths], dtype=object), "path": np.array(paths, dtype=object)}
    started = time.perf_counter()
    index = bundled_index(bundle)
    regressor = Regressor(str(bundle.onnx_path), settings.ort_threads)
    setup_s = time.perf_counter() - started
    decoded = decode_batch(batch, ScanConfig(size=bundle.image_size))  # warm-up of each stage, not timed
    regressed = regressor(decoded)
    frame = pd.DataFrame(regressed)  # batch_format="pandas", as _finish gets it
    finish_batch(frame, bundle.references, bundle.model_version, index=index, k=settings.k)
    stages = {
        "decode": _timed(lambda: decode_batch(batch, ScanConfig(size=bundle.image_size))),
        "regress": _timed(lambda: regressor(decoded)),
        "finish": _timed(lambda: finish_batch(frame, bundle.references, bundle.model_version, index=index, k=settings.k)),
    }
    n = settings.batch_size
    for stage in stages.values():
        stage["ms_per_image"], stage["cpu_ms_per_image"] = stage["wall_s"] / n * 1e3, stage["cpu_s"] / n * 1e3
    # How many of each can run at once under these resources (Ray's accounting, not cores).
    task_slots = max(0, int((cpus - settings.workers * settings.actor_cpus + 1e-9) // settings.task_cpus))
    slots = {"decode": task_slots, "regress": settings.workers, "finish": task_slots}
    for name, stage in stages.items():
        stage["slots"] = slots[name]
        stage["capacity_img_s"] = slots[name] * 1e3 / stage["ms_per_image"]
    cpu_per_image = sum(s["cpu_ms_per_image"] for s in stages.values()) / 1e3
    bound = min(stages, key=lambda s: stages[s]["capacity_img_s"])
    return {
        "batch_size": n, "setup_s": setup_s, "stages": stages,
        "decoded_batch_mib": len(pickle.dumps(decoded, protocol=5)) / 2**20,
        "cpu_ceiling_img_s": cpus / cpu_per_image,
        "slowest_stage": bound,
        "slowest_stage_img_s": stages[bound]["capacity_img_s"],
    }


def _timed(call, repeats: int = 2) -> dict:
    """Mean wall and process CPU (all threads: ORT's pool included, spinning too) of `call`."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        call()
    return {"wall_s": (time.perf_counter() - wall) / repeats, "cpu_s": (time.process_time() - cpu) / repeats}


def print_profile(profile: dict) -> None:
    stages = profile["stages"]
    print(f"\nper stage, in this process on one batch of {profile['batch_size']} (set-up {profile['setup_s']:.2f} s; "
          f"a decoded batch is {profile['decoded_batch_mib']:.1f} MiB through the object store):")
    for name, s in stages.items():
        print(f"  {name:8s} {s['ms_per_image']:7.1f} ms/img wall, {s['cpu_ms_per_image']:7.1f} ms/img CPU "
              f"({s['cpu_s'] / s['wall_s']:.1f} cores busy); {s['slots']} at once -> {s['capacity_img_s']:6.1f} img/s")
    print(f"  slowest stage with these resources: {profile['slowest_stage']} ({profile['slowest_stage_img_s']:.1f} img/s, "
          f"stages in isolation); CPU ceiling (all cores busy with the stages' CPU time) "
          f"{profile['cpu_ceiling_img_s']:.1f} img/s")
    sampled = profile.get("cpu_sampler")
    if sampled:
        print(f"\nCPU of the profiled job ({sampled['seconds']:.1f} s on {sampled['cpus']:g} CPUs, "
              f"{sampled['utilisation']:.0%} used):")
        for group, seconds in sampled["cpu_s_by_group"].items():
            if seconds >= 0.05:
                print(f"  {group:50s} {seconds:7.2f} CPU s  {seconds / (sampled['cpus'] * sampled['seconds']):6.1%} of the machine")
    for text in profile.get("ray_data_stats", []):
        print("\nRay Data stats of the profiled job:\n" + text)
    if "ray_data_stats" in profile and not profile["ray_data_stats"]:
        print("\n(no Ray Data stats were captured; look for them in the session's logs/ray-data.log)")


STAGE_OF_GROUP = (("decode_batch", "decode tasks"), ("Regressor", "ORT actors"), ("_finish", "finish + write tasks"),
                  ("Write", "finish + write tasks"))


def diagnose(profile: dict, steady: float, startup_s: float, settings) -> list[str]:
    """Where the time goes, in sentences, from the stage times and the sampled CPU."""
    lines = [(f"steady state {steady:.1f} img/s against: slowest stage alone {profile['slowest_stage_img_s']:.1f} "
             f"({profile['slowest_stage']}), CPU ceiling {profile['cpu_ceiling_img_s']:.1f} img/s")]
    regress = profile["stages"]["regress"]
    busy = regress["cpu_s"] / regress["wall_s"]
    if busy > settings.actor_cpus + 0.25:
        lines.append(f"ORT keeps {busy:.1f} cores busy (spinning threads included) in an actor that reserves "
                     f"{settings.actor_cpus:g} CPU: it competes with the decode tasks for the cores "
                     "(try --ort-threads equal to --actor-cpus)")
    sampled = profile.get("cpu_sampler")
    if sampled:
        machine_s = sampled["cpus"] * sampled["seconds"]
        shares: dict[str, float] = {}
        for group, seconds in sampled["cpu_s_by_group"].items():
            stage = next((name for key, name in STAGE_OF_GROUP if key in group), "Ray and the driver (overhead)")
            shares[stage] = shares.get(stage, 0.0) + seconds / machine_s
        shares["idle"] = max(0.0, 1 - sampled["utilisation"])
        lines.append("machine time: " + ", ".join(f"{name} {share:.0%}" for name, share in sorted(shares.items(), key=lambda kv: -kv[1])))
        if sampled["utilisation"] < 0.85:
            lines.append(f"{1 - sampled['utilisation']:.0%} of the cores were idle (start-up, about {startup_s:.0f} s of "
                         f"this {sampled['seconds']:.0f} s run, included): beyond start-up, stages waited on each other "
                         "(too few decode slots, batches queued behind the actors), not on the CPU")
        else:
            lines.append("the cores were busy: the job is CPU-bound; what is not decode or ORT is overhead to cut")
        profile["machine_shares"] = shares
    return lines


def profile_job(bundle: Path, archive: Path, work: Path, settings, n: int, cpus: float) -> dict:
    """One more job at n scans with the CPU sampler and Ray Data's stats on (not in the timings)."""
    sampler = CpuSampler()
    with StatsCapture() as capture:
        sampler.start_counting()
        seconds = job_seconds(bundle, archive, work, settings, n)
        sampled = sampler.stop(cpus)
    return {"seconds": seconds, "cpu_sampler": sampled, "ray_data_stats": capture.texts}


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="scans in the (larger) archive, n2")
    parser.add_argument("--small", type=int, default=None, help="scans in the smaller archive, n1 (default n2/4)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="bundle, archives and outputs (reused)")
    parser.add_argument("--image-size", type=int, default=256)
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
                             task_cpus=args.task_cpus, ort_threads=args.ort_threads)
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("clare_dist", "jobs", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = resnet50_bundle(args.work, args.image_size, args.index_cases)
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

        print(f"== tight loop: {len(files)} scans of 1024x1024, ResNet50 @{args.image_size} ==")
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
