"""bench_embed's profile of the job: each stage timed in-process on one batch, one more job with
Ray Data's per-operator stats and the CPU of every Ray process sampled, and where the time went."""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path
from typing import Self

import numpy as np
from cpu_sampler import CpuSampler
from embed_job import job_seconds

STAGE_OF_GROUP = (("decode_batch", "decode tasks"), ("RegressBatch", "ORT actors"), ("_finish", "finish + write tasks"),
                  ("Write", "finish + write tasks"))


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
    from jobs.embed import RegressBatch

    bundle = load_bundle(bundle_path)
    paths = [str(files[i % len(files)]) for i in range(settings.batch_size)]
    batch = {"scan_id": np.array([Path(p).name for p in paths], dtype=object), "path": np.array(paths, dtype=object)}
    started = time.perf_counter()
    index = bundled_index(bundle)
    regressor = RegressBatch(str(bundle.onnx_path), settings.ort_threads)
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
