"""`clare-dist serve` stops clean: SIGTERM, even to its whole process group, lets the requests in
flight finish while new ones are answered 503 `stopping` (and readiness says so), then Serve,
the local Ray and HAProxy are gone and the port is free; after a SIGKILL of its whole process
group the server (in a session of its own) stops by itself, and the watchdog ends what was left
(HAProxy) within seconds. And a start on a port that something holds names it, with the command
that ends it. The process table and the port are checked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from PIL import Image
from scan_files import gradient, png_bytes

from clare_dist.cli import main

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240
IN_FLIGHT = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens on it (the connections of the test's requests may linger in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def servers():
    """The commands a test started; any still running at its end (a failed assertion) are killed
    with their process group, and their servers stop with them."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def start_serve(bundle: Path, port: int, log: Path, *options: str) -> subprocess.Popen:
    """`clare-dist serve` on a local Ray of its own, in a process group of its own (as a terminal
    starts it), until GET /readyz answers 200."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "clare_dist", "serve", "--bundle", str(bundle), "--port", str(port),
               "--num-cpus", "2", *options]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"serve exited with {process.returncode}: {log.read_text()[-3000:]}"
        try:
            # the command says "ready" once its readiness has answered many times running (serve/lifecycle.py)
            if "ready on http" in log.read_text() and requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return process
        except requests.RequestException:
            pass
        time.sleep(1)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"serve was not ready within {START_TIMEOUT_S} s: {log.read_text()[-3000:]}")


def started_by(process: subprocess.Popen) -> dict[int, tuple[str, float]]:
    """pid → (name, start time) of everything the command has started."""
    found = {}
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            found[child.pid] = (child.name(), child.create_time())
        except psutil.Error:
            continue
    return found


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def still_running(started: dict[int, tuple[str, float]]) -> list[str]:
    alive = []
    for pid, (name, created) in started.items():
        try:
            child = psutil.Process(pid)
            if child.create_time() == created and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{name} ({pid})")
        except psutil.Error:
            continue
    return alive


def assert_nothing_left(started: dict[int, tuple[str, float]], port: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while (still_running(started) or not port_is_free(port)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert still_running(started) == []
    assert port_is_free(port), f"port {port} is still held"


def wait_until_admitted(port: int, answers: list, within_s: float = 60) -> bool:
    """Whether every request was admitted by the replica before `within_s`: those answered already
    plus those the API's readiness shows at work or queued. The answered are counted before the
    readiness is asked, so a request that ends in between is counted in neither, never in both."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        answered = sum(a.done() for a in answers)
        answer = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        # With both cores busy, the proxy in front may answer for the replica (a 502/503 page, not
        # JSON) before it answers again: only the replica's own answer counts.
        if answer.headers.get("content-type", "").startswith("application/json"):
            queue = answer.json().get("queue", {})
            if answered + queue.get("working", 0) + queue.get("waiting", 0) >= len(answers):
                return True
        time.sleep(0.05)
    return False


def wait_until_stopping(port: int, within_s: float = 30) -> dict | None:
    """The replica's readiness once it says it is stopping (answered 503), or None."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        answer = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        if answer.headers.get("content-type", "").startswith("application/json") and answer.json().get("state") == "stopping":
            assert answer.status_code == 503
            return answer.json()
        time.sleep(0.05)
    return None


def haproxy_expected() -> bool:
    from serve.app import HAPROXY_INGRESS, serve_environment

    return HAPROXY_INGRESS.items() <= serve_environment().items()


@pytest.mark.cluster
def test_sigterm_drains_the_requests_in_flight_then_leaves_nothing_running(tiny_bundle, tmp_path, servers):
    port = free_port()
    process = start_serve(tiny_bundle, port, tmp_path / "serve.log", "--max-queue-wait-s", "60", "--drain-s", "60")
    servers.append(process)
    started = started_by(process)
    names = {name for name, _ in started.values()}
    assert "raylet" in names and "gcs_server" in names
    outside = {name for pid, (name, _) in started.items() if _process_group(pid) != process.pid}
    assert {"raylet", "gcs_server"} <= outside, "Ray's daemons must not share the command's process group"
    assert ("haproxy" in names) == haproxy_expected()
    png = png_bytes(Image.fromarray(gradient(1024, 1024)))

    def plot() -> int | str:  # a figure of a full-size scan each: a dozen keep 2 cores busy for seconds
        answer = requests.post(f"http://127.0.0.1:{port}/v1/predict/plot", data=png, headers={"Content-Type": "image/png"},
                               timeout=120)
        return 200 if answer.status_code == 200 else f"{answer.status_code} {answer.headers.get('server')}: {answer.text[:200]}"

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        answers = [pool.submit(plot) for _ in range(IN_FLIGHT)]
        # Every request admitted by the replica first: one still between the proxy and the replica
        # when the app is deleted is not admitted, and the proxy answers it 404 (no such route).
        admitted = wait_until_admitted(port, answers)
        stopping = time.monotonic()
        # To the whole process group, as `timeout`, `kill -- -PGID` and supervisord send it: it
        # must reach the command alone, not the GCS of its local Ray (serve/server_session.py).
        os.killpg(process.pid, signal.SIGTERM)
        unanswered = sum(not a.done() for a in answers)
        readiness = wait_until_stopping(port)
        late = requests.post(f"http://127.0.0.1:{port}/v1/predict", data=png, headers={"Content-Type": "image/png"}, timeout=30)
        still_working = sum(not a.done() for a in answers)
        statuses = [a.result() for a in answers]
    assert admitted, f"the replica never showed all {IN_FLIGHT} requests admitted: {statuses}"
    assert unanswered > 0, "every request was answered before SIGTERM: the test would mean nothing"
    # While it finishes what it holds, a new request is told the server is stopping, not 404.
    assert readiness is not None and readiness["ready"] is False, readiness
    assert still_working > 0, "the late request must arrive while the others are still being answered"
    assert late.status_code == 503 and late.json()["error"] == "stopping", (late.status_code, late.text[:300])
    assert int(late.headers["Retry-After"]) >= 1
    assert process.wait(timeout=120) == 0
    stop_s = time.monotonic() - stopping
    log = (tmp_path / "serve.log").read_text()
    assert statuses == [200] * IN_FLIGHT, log[-4000:]
    assert_nothing_left(started, port, within_s=5)
    assert "SIGTERM: stopping" in log and "stopped: Serve and the local Ray" in log
    assert "drained: 1 of 1 ingress replicas" in log, "the command did not wait for the replica to drain"
    print(f"stopped in {stop_s:.1f} s with {unanswered} requests in flight")


@pytest.mark.cluster
def test_a_killed_serve_leaves_nothing_running(tiny_bundle, tmp_path, servers):
    port = free_port()
    process = start_serve(tiny_bundle, port, tmp_path / "serve.log")
    servers.append(process)
    started = started_by(process)
    assert ("haproxy" in {name for name, _ in started.values()}) == haproxy_expected()
    os.killpg(process.pid, signal.SIGKILL)  # what an OOM killer or a closed terminal's group kill does
    process.wait(timeout=30)
    assert_nothing_left(started, port, within_s=30)
    # the server, in a session of its own, saw the command end and stopped as on one SIGTERM
    log = (tmp_path / "serve.log").read_text()
    assert "the command that started this server has ended: stopping" in log, log[-3000:]
    assert "SIGTERM: stopping" in log and "stopped: Serve and the local Ray" in log, log[-3000:]


def test_a_taken_port_is_named_with_the_command_that_ends_its_holder(tiny_bundle, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["serve", "--bundle", str(tiny_bundle), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} is in use by " in err and f"(pid {os.getpid()})" in err
    assert f"end it with `kill {os.getpid()}`" in err and "Traceback" not in err



def test_a_server_that_fails_is_reported_not_taken_for_a_clean_stop():
    from serve import server_session

    with pytest.raises(server_session.ServerExitedError, match=r"ended with status 1; its messages are above"):
        server_session.run_server({"not_a_setting": 1})


def test_a_server_whose_command_ends_is_sent_one_sigterm():
    """However the command ends, its server hears of it once: a second SIGTERM would mean "stop at once"."""
    script = """
import os, signal, sys, time
from serve.server_session import stop_when_closed
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(time.monotonic()))
alive, held = os.pipe()
stop_when_closed(alive)
time.sleep(0.5)
assert not got, "a SIGTERM before the command ended"
os.close(held)
time.sleep(2)
print(len(got))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["1"], done.stdout + done.stderr
