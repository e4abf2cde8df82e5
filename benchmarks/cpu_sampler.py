"""Where a benchmark's CPU goes: this process and every process it started (Ray's daemons,
workers and replicas), by the title Ray gives each one, so a profile can say which stage or
daemon spent the cores. Shared by the embed profile and the serving load (`embed_profile.py`,
`serve_load.py`)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path


class CpuSampler(threading.Thread):
    """CPU seconds of this process and its descendants (Ray's daemons and workers), grouped by
    process title, which Ray sets to the task or actor a worker is running. Sampled every
    `interval` s; a worker's CPU since the last sample goes to its title now."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.interval = psutil, interval
        self.me = psutil.Process()
        self.stop_event = threading.Event()
        self.last: dict[int, float] = {}
        self.by_group: dict[str, float] = {}

    def run(self) -> None:
        self.started = time.perf_counter()
        while not self.stop_event.wait(self.interval):
            self.sample()
        self.sample()
        self.seconds = time.perf_counter() - self.started

    def sample(self) -> None:
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                group = "driver (this process)" if proc.pid == self.me.pid else _group(proc)
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
            total = times.user + times.system
            self.by_group[group] = self.by_group.get(group, 0.0) + total - self.last.get(proc.pid, 0.0)
            self.last[proc.pid] = total

    def start_counting(self) -> None:
        """Take the baseline (CPU already spent before the profiled run is not counted)."""
        self.sample()
        self.by_group.clear()
        self.start()

    def stop(self, cpus: float) -> dict:
        self.stop_event.set()
        self.join()
        used = sum(self.by_group.values())
        return {"seconds": self.seconds, "cpus": cpus, "cpu_s_by_group": dict(sorted(self.by_group.items(), key=lambda kv: -kv[1])),
                "cpu_s_used": used, "utilisation": used / (cpus * self.seconds)}


def _group(proc) -> str:
    """'MapBatches(decode_batch)', 'MapWorker(MapBatches(RegressBatch))', 'IDLE', 'raylet', ..."""
    title = " ".join(proc.cmdline()).strip()
    if title.startswith("ray::"):
        name = title[5:].split(" ")[0]
        return re.sub(r"\)\.\w+$", ")", name)  # an actor's method call: 'MapWorker(...).submit'
    if proc.name().startswith("python"):
        scripts = [Path(arg).name for arg in proc.cmdline()[1:] if arg.endswith(".py")]
        return f"python {scripts[0]}" if scripts else "python (other)"
    return proc.name()
