"""bench_embed's timing of the Ray Data job: `jobs.embed.run_embed` on archives of two sizes, into
fresh output directories, for the steady-state rate and the start-up cost of each setting."""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import time
import uuid
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger("bench_embed")


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
