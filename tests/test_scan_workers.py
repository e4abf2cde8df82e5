"""Scan workers: each scan gets the point the in-process path gives it, scans queued together are
regressed as one batch on a single-thread session, a lone scan on every core, and a bad scan
fails alone."""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_scans

from clare_dist.bundle import load_bundle
from clare_dist.runtime import open_session, run_regressor
from clare_dist import scan_workers
from clare_dist.scan_workers import ScanWorkers
from clare_dist.scans import ScanConfig, ScanError, preprocess_scan


@pytest.fixture(scope="module")
def scans() -> list[bytes]:
    return [f.read_bytes() for f in sample_scans(6)]


@pytest.fixture(scope="module")
def expected(tiny_bundle: Path, scans: list[bytes]) -> np.ndarray:
    """The scans' points, decoded and regressed in-process as `clare-dist predict` does."""
    bundle = load_bundle(tiny_bundle)
    decoded = np.stack([preprocess_scan(s, ScanConfig(size=bundle.image_size)) for s in scans])
    return run_regressor(open_session(bundle.onnx_path, threads=1), decoded, batch_size=1).coords


class Gate:
    """A scan source that holds the worker decoding it until the test hands over the scan's bytes
    (when the `worker_at` block is left)."""

    def __init__(self) -> None:
        self.taken = threading.Event()
        self.scan: queue.Queue[bytes] = queue.Queue()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Gate:
    held, real = Gate(), scan_workers.decode

    def decode(source, config):
        if source is held:
            held.taken.set()
            return real(held.scan.get(timeout=60), config)
        return real(source, config)

    monkeypatch.setattr(scan_workers, "decode", decode)
    return held


@contextmanager
def worker_at(gate: Gate):
    """Entered once a worker has taken its batch and started on the gate; the scan given to the
    function it yields reaches the worker when the block is left."""
    assert gate.taken.wait(60), "no worker took the gated scan"
    given: list[bytes] = []
    try:
        yield given.append
    finally:
        gate.scan.put(given[0] if given else b"")


def workers(bundle_path: Path, count: int, **options) -> ScanWorkers:
    bundle = load_bundle(bundle_path)
    return ScanWorkers(bundle.onnx_path, ScanConfig(size=bundle.image_size), count, wide_threads=2, **options)


def test_scans_queued_together_are_one_batch_on_a_single_thread_and_get_their_own_points(tiny_bundle, scans, expected, gate):
    pool = workers(tiny_bundle, 1)
    try:
        first = pool.submit(gate)
        with worker_at(gate) as write:
            queued = [pool.submit(s) for s in scans[1:]]
            write(scans[0])
        results = [first.result(timeout=60)] + [f.result(timeout=60) for f in queued]
    finally:
        pool.close()
    np.testing.assert_allclose([r.coords for r in results], expected, atol=1e-5)
    # The first was taken alone, but with scans queued behind it: one thread, like the batch after it.
    assert [(r.batch_size, r.threads) for r in results] == [(1, 1)] + [(5, 1)] * 5
    assert all(r.seconds["decode"] > 0 and r.seconds["regress"] > 0 for r in results)
    # The queued scans waited for the worker at least while it regressed the first scan.
    assert min(r.seconds["queue"] for r in results[1:]) > results[0].seconds["regress"]


def test_max_batch_caps_what_a_worker_takes(tiny_bundle, scans, expected, gate):
    pool = workers(tiny_bundle, 1, max_batch=2)
    try:
        first = pool.submit(gate)
        with worker_at(gate) as write:
            queued = [pool.submit(s) for s in scans[1:]]
            write(scans[0])
        results = [f.result(timeout=60) for f in [first, *queued]]
    finally:
        pool.close()
    assert [r.batch_size for r in results] == [1, 2, 2, 2, 2, 1]
    np.testing.assert_allclose([r.coords for r in results], expected, atol=1e-5)


def test_a_lone_scan_uses_a_thread_per_core_only_while_the_other_workers_are_idle(tiny_bundle, scans, expected, gate):
    pool = workers(tiny_bundle, 2)
    try:
        blocked = pool.submit(gate)
        with worker_at(gate) as write:
            beside = pool.submit(scans[1]).result(timeout=60)
            write(scans[0])
        blocked.result(timeout=60)
        alone = pool.submit(scans[2]).result(timeout=60)
    finally:
        pool.close()
    assert (beside.batch_size, beside.threads) == (1, 1)
    assert (alone.batch_size, alone.threads) == (1, 2)
    np.testing.assert_allclose([beside.coords, alone.coords], expected[1:3], atol=1e-5)


def test_a_bad_scan_fails_alone_with_its_reason(tiny_bundle, scans, expected, gate):
    pool = workers(tiny_bundle, 1)
    try:
        first = pool.submit(gate)
        with worker_at(gate) as write:
            good, bad, decoded = pool.submit(scans[1]), pool.submit(scans[2][:200]), pool.submit(np.zeros((48, 48), np.uint8))
            write(scans[0])
        first.result(timeout=60)
        with pytest.raises(ScanError) as err:
            bad.result(timeout=60)
        result = good.result(timeout=60)
        assert decoded.result(timeout=60).batch_size == 2
    finally:
        pool.close()
    assert err.value.kind == "truncated"
    np.testing.assert_allclose(result.coords, expected[1], atol=1e-5)


def test_a_failed_regression_reaches_each_scan_of_its_batch_and_the_workers_go_on(tiny_bundle, scans, expected, gate, monkeypatch):
    from clare_dist import scan_workers

    batches = []

    def second_batch_fails(session, batch, batch_size):
        batches.append(len(batch))
        if len(batches) == 2:
            raise RuntimeError("ONNX Runtime failed")
        return run_regressor(session, batch, batch_size=batch_size)

    monkeypatch.setattr(scan_workers, "run_regressor", second_batch_fails)
    pool = workers(tiny_bundle, 1)
    try:
        first = pool.submit(gate)
        with worker_at(gate) as write:
            failing = [pool.submit(s) for s in scans[1:4]]
            write(scans[0])
        first.result(timeout=60)
        for future in failing:
            with pytest.raises(RuntimeError, match="ONNX Runtime failed"):
                future.result(timeout=60)
        after = pool.submit(scans[4]).result(timeout=60)
    finally:
        pool.close()
    assert batches == [1, 3, 1]
    np.testing.assert_allclose(after.coords, expected[4], atol=1e-5)


def test_a_decoded_scan_of_the_wrong_size_and_a_closed_pool_are_refused(tiny_bundle, scans):
    pool = workers(tiny_bundle, 1)
    with pytest.raises(ValueError, match="48×48 uint8"):
        pool.submit(np.zeros((64, 64), np.uint8))
    pool.close()
    assert not any(t.is_alive() for t in pool.threads)
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(scans[0])


@pytest.mark.parametrize("spinning", [False, True])
def test_the_lone_scan_session_has_a_thread_per_core_spinning_only_when_asked(tiny_bundle, spinning):
    """Its threads busy-wait only when asked (they would take the cores the other workers decode
    on); one thread asked for means no second session at all (the model's memory once)."""
    pool = workers(tiny_bundle, 1, spinning=spinning)
    options = pool.wide.get_session_options()
    pool.close()
    assert (options.intra_op_num_threads, pool.narrow.get_session_options().intra_op_num_threads) == (2, 1)
    try:
        setting = options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: ONNX Runtime's default, which spins
        setting = None
    assert setting == (None if spinning else "0")
    bundle = load_bundle(tiny_bundle)
    single = ScanWorkers(bundle.onnx_path, ScanConfig(size=bundle.image_size), 1, wide_threads=1)
    single.close()
    assert single.wide is None
