"""Decode and regress scans on one worker thread per core, for a server that screens scans as
they arrive.

A replica that decodes in one thread pool and runs ONNX Runtime's intra-op threads beside it has
more busy threads than cores. ORT splits every operator across its threads and waits for the
slowest, so whenever the scheduler gives a core to decoding, ORT's other threads wait too.
Measured on 2 cores, in-process with 32 scans in flight: 15.4–19.0 scans/s that way, against
17.8–19.1 with a worker per core; served over HTTP at C = 32, 11.7–12.1 against 15.3–16.3
requests/s (benchmarks/README.md).

Here each worker owns a core: it takes the scans that have queued (up to `max_batch`), decodes
them, and regresses them as one batch on a single-thread session, so k workers keep k cores busy
and no thread waits for another. A lone scan on an idle pool regresses on a session with a thread
per core instead, which answers it in about half the time. On a GPU the workers share the one
CUDA session; they still decode in parallel.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from clare_dist.runtime import CPU_PROVIDER, open_session, run_regressor
from clare_dist.scans import ScanConfig, ScanSource
from clare_dist.screening import decode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Regression:
    """One scan's point and OOD score, how it was computed (scans in its batch, ORT threads that ran it) and the
    seconds it waited for a worker, spent decoding and spent regressing its batch."""

    coords: np.ndarray
    ood_score: float | None  # None: the bundle's graph has no OOD score
    batch_size: int
    threads: int
    seconds: dict[str, float]


class Job(NamedTuple):
    """A submitted scan, its caller's future, and when it came (for the time it queued)."""

    scan: ScanSource | np.ndarray
    future: Future
    submitted: float


class ScanWorkers:
    """A pool of `workers` threads that screen submitted scans (encoded bytes, a path, or an
    already decoded size×size uint8 array; decoded with `scan_config`) into `Regression`s.
    `close()` stops it."""

    def __init__(self, onnx_path: str | os.PathLike, scan_config: ScanConfig, workers: int, max_batch: int = 16,
                 wide_threads: int | None = None, spinning: bool = False) -> None:
        if workers < 1 or max_batch < 1:
            raise ValueError(f"ScanWorkers needs at least one worker and a batch of one; got {workers} workers, max_batch {max_batch}")
        self.scan_config, self.image_size, self.max_batch = scan_config, scan_config.size, max_batch
        self.narrow = open_session(onnx_path, threads=1)
        self.wide_threads = wide_threads or os.cpu_count() or 1
        on_cpu = self.narrow.get_providers()[0] == CPU_PROVIDER
        wide_pays = on_cpu and self.wide_threads > 1
        self.wide = open_session(onnx_path, threads=self.wide_threads, spinning=spinning) if wide_pays else None
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.busy = 0
        self.closed = False
        self.threads = [threading.Thread(target=self._work, name=f"clare-scan-worker-{i}", daemon=True) for i in range(workers)]
        for thread in self.threads:
            thread.start()
        log.info("%d scan workers on %s (a lone scan on %s)", workers, self.narrow.get_providers()[0],
                 f"{self.wide_threads} threads" if self.wide else "the same session")

    def submit(self, scan: ScanSource | np.ndarray) -> Future:
        """A future of the scan's Regression; it raises ScanError for a scan that cannot be decoded."""
        if isinstance(scan, np.ndarray) and (scan.shape != (self.image_size,) * 2 or scan.dtype != np.uint8):
            raise ValueError(f"decoded scans must be {self.image_size}×{self.image_size} uint8; got {scan.dtype} {scan.shape}")
        future: Future = Future()
        with self.lock:
            if self.closed:
                raise RuntimeError("these scan workers are closed; the server is shutting down")
            self.jobs.put(Job(scan, future, time.perf_counter()))
        return future

    def close(self) -> None:
        """Finish the scans already submitted, then stop the workers."""
        with self.lock:
            self.closed = True
            for _ in self.threads:
                self.jobs.put(None)
        for thread in self.threads:
            thread.join()

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            try:
                outcomes = self._screen(jobs)
            except Exception as err:  # a bug, not a scan's fault: its callers get it rather than wait forever
                log.exception("a scan worker failed on a batch of %d scans", len(jobs))
                outcomes = [(job.future, err) for job in jobs if job.future.running()]
            finally:
                with self.lock:
                    self.busy -= 1
            # Answered only now, so a caller that has its answer finds this worker idle again.
            for future, outcome in outcomes:
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _take(self) -> list[Job] | None:
        """The next job and those queued behind it, up to max_batch; None when closing."""
        first = self.jobs.get()
        if first is None:
            return None
        jobs = [first]
        while len(jobs) < self.max_batch:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # a stop for another worker: leave it for them
                self.jobs.put(None)
                break
            jobs.append(job)
        with self.lock:
            self.busy += 1
        return jobs

    def _screen(self, jobs: list[Job]) -> list[tuple[Future, Regression | Exception]]:
        """Each job's outcome: its Regression, or the exception its scan raised (ScanError for a bad one)."""
        outcomes: list[tuple[Future, Regression | Exception]] = []
        scans, futures, seconds = [], [], []
        for source, future, submitted in jobs:
            if not future.set_running_or_notify_cancel():  # the caller gave up waiting
                continue
            start = time.perf_counter()
            try:
                scans.append(source if isinstance(source, np.ndarray) else decode(source, self.scan_config))
            except Exception as err:  # noqa: BLE001 - handed to this scan's caller: ScanError for a bad scan, anything else too
                outcomes.append((future, err))
                continue
            futures.append(future)
            # queue: waiting for a worker, and for the scans before it in its batch to decode
            seconds.append({"queue": start - submitted, "decode": time.perf_counter() - start})
        if not scans:
            return outcomes
        session, threads = self._session_for(len(scans))
        start = time.perf_counter()
        try:
            regression = run_regressor(session, np.stack(scans), batch_size=len(scans))
        except Exception as err:  # ONNX Runtime raises its own pybind types; each caller of the batch gets it
            log.exception("ONNX Runtime failed on a batch of %d scans", len(scans))
            return outcomes + [(future, err) for future in futures]
        regress_s = time.perf_counter() - start
        scores = [None] * len(futures) if regression.ood_scores is None else list(regression.ood_scores)
        return outcomes + [(future, Regression(point, score, len(scans), threads, own | {"regress": regress_s}))
                           for future, point, score, own in zip(futures, regression.coords, scores, seconds)]

    def _session_for(self, batch: int):
        """(session, its intra-op threads): every core for a lone scan while no other worker is busy."""
        with self.lock:
            alone = self.busy == 1
        if self.wide is not None and batch == 1 and alone and self.jobs.empty():
            return self.wide, self.wide_threads
        return self.narrow, 1
