"""Faults in the middle of `clare-dist embed`, on the session's local multi-node cluster: a worker
node lost outright (its raylet SIGKILLed, as a reclaimed spot node or an OOM kill does) and the
staged pipeline's ONNX Runtime actor killed alone. Either way the job ends with exactly one row
per scan, none twice, none lost; the rows equal an undisturbed run's.

What survives by itself is Ray's doing, with the job's retry settings (jobs/embed.py): a lost
task runs again on another node (Ray Data's write names its part file by the task, so a rerun
task replaces what its first attempt wrote), and a killed actor is restarted and its batches
resubmitted. A fault the job does not survive (the driver itself killed) needs a rerun, which
test_embed's resumption test covers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from clare_dist.batch import read_results

from conftest import connect_ray

REPO = Path(__file__).resolve().parents[1]
SCANS = 160  # the tiny archive


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_extra_node(address: str) -> int:
    """One more worker node (1 CPU) joined to the session's cluster; the pid of its raylet."""
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(["ray", "start", f"--address={address}", "--num-cpus=1", "--num-gpus=0", f"--node-manager-port={port}",
                    "--node-ip-address=127.0.0.1", "--disable-usage-stats"], check=True, env=env, capture_output=True,
                   timeout=180)
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "raylet" and f"--node_manager_port={port}" in (process.info["cmdline"] or []):
            return process.pid
    raise AssertionError(f"no raylet with node manager port {port} after `ray start`")


def embed(bundle: Path, archive: Path, out: Path, address: str, *options: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "clare_dist", "embed", "--bundle", str(bundle), "--archive",
                             str(archive), "--out", str(out), "--batch-size", "4", "--address", address, *options],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, within_s: float, what: str, job: subprocess.Popen):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if (found := condition()):
            return found
        assert job.poll() is None, f"the job ended before {what}: {job.stdout.read()[-3000:]}"
        time.sleep(0.05)
    pytest.fail(f"not within {within_s:g} s: {what}")


def working_processes(titled: str, under: int | None = None) -> list[psutil.Process]:
    """Ray worker processes whose title (Ray sets it to `ray::<task or actor>`) holds `titled`;
    with `under`, only those of that raylet. The state API needs the dashboard, which this
    cluster runs without, as the manifests do."""
    found = []
    candidates = psutil.Process(under).children(recursive=True) if under else psutil.process_iter()
    for process in candidates:
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::") and titled in title:
            found.append(process)
    return found


@pytest.fixture(scope="module")
def connected(ray_address):
    connect_ray(ray_address)
    return ray_address


@pytest.fixture(scope="module")
def undisturbed(connected, tiny_bundle, tiny_archive, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("undisturbed")
    job = embed(tiny_bundle, tiny_archive / "archive" / "images", out, connected)
    assert job.wait(timeout=600) == 0, job.stdout.read()[-3000:]
    return read_results(out)


def assert_same_rows(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(got) == SCANS and got["scan_id"].is_unique and (got["status"] == "ok").all()
    pd.testing.assert_frame_equal(got.drop(columns=["x", "y", "top3_distances"]),
                                  expected.drop(columns=["x", "y", "top3_distances"]))
    assert np.allclose(got[["x", "y"]].to_numpy(), expected[["x", "y"]].to_numpy(), atol=1e-6)


@pytest.mark.cluster
def test_a_worker_node_lost_mid_job_loses_no_scan_and_writes_none_twice(connected, undisturbed, tiny_bundle,
                                                                        tiny_archive, tmp_path):
    raylet = start_extra_node(connected)
    job = embed(tiny_bundle, tiny_archive / "archive" / "images", tmp_path, connected)
    lost = wait_for(lambda: working_processes("screen_batch", under=raylet), 300, "a task ran on the extra node", job)
    os.kill(raylet, signal.SIGKILL)
    assert job.wait(timeout=600) == 0, job.stdout.read()[-3000:]
    assert lost, "a task must have been running on the lost node for this test to mean anything"
    assert_same_rows(read_results(tmp_path), undisturbed)
    assert len(list((tmp_path / "results").glob("*.parquet"))) >= 1


@pytest.mark.cluster
def test_the_regressor_actor_killed_alone_is_restarted_and_no_batch_is_lost(connected, undisturbed, tiny_bundle,
                                                                            tiny_archive, tmp_path):
    job = embed(tiny_bundle, tiny_archive / "archive" / "images", tmp_path, connected, "--pipeline", "staged")
    (actor, *_) = wait_for(lambda: working_processes("MapWorker(MapBatches(RegressBatch))"), 300,
                           "the regressor actor started", job)
    parts = wait_for(lambda: list((tmp_path / "results").glob("*.parquet")), 300, "a first part file", job)
    os.kill(actor.pid, signal.SIGKILL)
    assert job.wait(timeout=600) == 0, job.stdout.read()[-3000:]
    assert len(parts) < SCANS // 4, "the actor must have had batches left for this test to mean anything"
    assert_same_rows(read_results(tmp_path), undisturbed)
