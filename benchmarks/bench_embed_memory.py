"""Memory of the archive embedding job as the archive grows (DESIGN.md §3: memory stays flat).

Runs `jobs.embed.run_embed` (ResNet50 @256 bundle of common.py, default settings) over archives
of growing size and samples, every 0.5 s, the memory of every process of the local Ray instance
and of the driver: the sum of their PSS (proportional set size: shared pages counted once,
split between their users), its peak per run, and the peak of the largest single process.
Ray's object store is shared memory and shows up in the PSS of the processes that map it.

    python benchmarks/bench_embed_memory.py                    # 256, 1024, 2048 scans
    python benchmarks/bench_embed_memory.py --sizes 256,4096
"""

from __future__ import annotations

import argparse
import logging
import shutil
import threading
import time
from pathlib import Path

import psutil
from common import DEFAULT_WORK, archive_of, machine, resnet50_bundle, write_json

log = logging.getLogger("bench_embed_memory")
MIB = 1024 * 1024


class MemorySampler(threading.Thread):
    """Peak summed PSS of the driver and every Ray process, sampled in the background."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak_total, self.peak_process = interval, 0, 0
        self.running = threading.Event()
        self.running.set()

    def run(self) -> None:
        while self.running.is_set():
            total = 0
            for proc in ray_processes():
                try:
                    pss = proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                total += pss
                self.peak_process = max(self.peak_process, pss)
            self.peak_total = max(self.peak_total, total)
            time.sleep(self.interval)

    def stop(self) -> dict[str, float]:
        self.running.clear()
        self.join()
        return {"peak_total_pss_mib": self.peak_total / MIB, "peak_process_pss_mib": self.peak_process / MIB}


def ray_processes() -> list[psutil.Process]:
    """This process and every process whose command line says it belongs to Ray."""
    found = [psutil.Process()]
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if proc.pid != found[0].pid and ("ray::" in line or "/ray/" in line or "raylet" in line or "gcs_server" in line):
            found.append(proc)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,1024,2048")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/embed_memory.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from jobs.cluster import connect
    from jobs.embed import EmbedSettings, run_embed

    bundle = resnet50_bundle(args.work, 256, index_cases=100_000)
    connect(None, None)
    runs = []
    for n in (int(size) for size in args.sizes.split(",")):
        archive = archive_of(n, args.work / f"archive-{n}", args.work / "pool-1024")
        out = args.work / "memory-out" / str(n)
        shutil.rmtree(out, ignore_errors=True)
        sampler = MemorySampler()
        sampler.start()
        start = time.perf_counter()
        results = run_embed(bundle, archive, out, EmbedSettings())
        seconds = time.perf_counter() - start
        run = {"scans": n, "rows": len(results), "seconds": seconds, **sampler.stop()}
        runs.append(run)
        print(f"{n:6d} scans: {seconds:6.1f} s, peak memory of the driver and Ray processes "
              f"{run['peak_total_pss_mib']:7.0f} MiB (largest process {run['peak_process_pss_mib']:5.0f} MiB)")
        shutil.rmtree(out, ignore_errors=True)
    growth = runs[-1]["peak_total_pss_mib"] - runs[0]["peak_total_pss_mib"]
    print(f"peak memory from {runs[0]['scans']} to {runs[-1]['scans']} scans: {growth:+.0f} MiB")
    write_json({"benchmark": "embed job memory against archive size", "machine": machine(), "runs": runs,
                "growth_mib": growth}, args.out)


if __name__ == "__main__":
    main()
