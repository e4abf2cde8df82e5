"""`clare-dist serve` from start to stop: nothing it started is left running afterwards.

- Where it starts a local Ray, the server is a child in a session of its own, the command
  relaying SIGINT and SIGTERM to it (serve/server_session.py): a SIGTERM to the command's whole
  process group would otherwise end Ray's GCS with it, before anything could drain.
- Start: where it starts a local Ray, it first looks at its port. A process already listening
  there (most often the HAProxy of a run that was killed) is named with the command that ends
  it, instead of Serve failing later with a bind error in an actor's log. Then a watchdog
  (serve/watchdog.py) is started in a session of its own: if the command is killed outright,
  it ends what the command had started.
- Stop: SIGINT (Ctrl-C) or SIGTERM. The ingress replicas are told first (serve/stopping.py):
  they answer new requests 503 `stopping` and finish those they hold, for up to `drain_s`.
  Then the application is deleted, while Serve's proxy still carries answers back (Serve waits
  up to drain_s again, its graceful_shutdown_timeout_s, for anything still running); then Serve,
  then the local Ray, then the watchdog checks that nothing is left. Stopping takes drain_s at
  most, plus Serve's and Ray's own teardown, a few seconds here (the stop test measures it),
  unless a request outlasts the first drain_s. A second signal while stopping is not waited on:
  Ray is shut down at once.
- Joined to a cluster (`--address`), the command stops Serve's application and leaves the
  cluster running: it did not start it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from clare_dist.errors import ClareError
from serve import server_session

log = logging.getLogger(__name__)

WATCHDOG = Path(__file__).with_name("watchdog.py")
ROUTED_IN_A_ROW, ROUTED_WITHIN_S = 25, 60.0  # readiness answers running before "ready", and how long to try
WATCHDOG_EXIT_S = 15.0  # its grace period and SIGTERM-to-SIGKILL wait, with room
# An ingress replica behind HAProxy stays up this long after it is told to stop, so that an
# external load balancer can take it out of rotation (30 s by default). Locally no balancer is
# in front, so the stop does not wait for one; the RayService keeps Serve's default.
LOCAL_DRAINING = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


class PortInUseError(ClareError):
    """The port `clare-dist serve` would listen on is held by another process, often one that a
    killed run left behind."""


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUseError naming the processes listening on host:port, with the command that ends them."""
    holders = []
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status != psutil.CONN_LISTEN or connection.laddr.port != port:
            continue
        if connection.laddr.ip not in (host, "0.0.0.0", "::") and host not in ("0.0.0.0", "::"):
            continue
        holders.append(connection.pid)
    if not holders:
        return
    pids = sorted({pid for pid in holders if pid is not None})
    names = []
    for pid in pids:
        try:
            names.append(f"{psutil.Process(pid).name()} (pid {pid})")
        except psutil.Error:
            names.append(f"pid {pid}")
    if not pids:
        raise PortInUseError(f"port {port} is in use by a process this user cannot see; `ss -ltnp 'sport = :{port}'` "
                             f"as root shows it, or serve on another --port")
    leftover = any("haproxy" in name for name in names)
    raise PortInUseError(
        f"port {port} is in use by {', '.join(names)}"
        + (", most likely left running by a clare-dist serve that was killed" if leftover else "")
        + f"; end it with `kill {' '.join(map(str, pids))}`, or serve on another --port")


class Watchdog:
    """serve/watchdog.py in a session of its own, watching this process through a pipe."""

    def __init__(self, port: int) -> None:
        self.process = subprocess.Popen([sys.executable, str(WATCHDOG), str(os.getpid()), str(port)],
                                        stdin=subprocess.PIPE, start_new_session=True)

    def close(self) -> None:
        """Tell it this process has stopped, and wait while it ends whatever is left."""
        self.process.stdin.close()
        try:
            self.process.wait(WATCHDOG_EXIT_S)
        except subprocess.TimeoutExpired:
            log.warning("the watchdog (pid %d) did not finish within %.0f s; it goes on by itself",
                        self.process.pid, WATCHDOG_EXIT_S)


class StopSignal:
    """SIGINT and SIGTERM set an event the main thread waits on; a second one raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.event = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        log.info("%s: stopping", signal.Signals(signum).name)
        self.event.set()

    def wait(self) -> None:
        while not self.event.wait(1.0):  # a timed wait, so the handler runs promptly
            continue


def wait_until_routed(host: str, port: int, in_a_row: int = ROUTED_IN_A_ROW, within_s: float = ROUTED_WITHIN_S) -> None:
    """Return once the API's own readiness has answered `in_a_row` times running on the port.
    Serve reports the application ready while its HTTP ingress may still answer some requests
    404 (no route yet: seen with HAProxy on a loaded 2-core machine), so "ready" is printed only
    once requests reach the application."""
    import requests

    target = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    deadline, answered = time.monotonic() + within_s, 0
    while answered < in_a_row:
        if time.monotonic() > deadline:
            log.warning("the API did not answer its readiness %d times running within %.0f s; requests may be "
                        "answered 404 (no route) for a while", in_a_row, within_s)
            return
        try:
            answer = requests.get(f"http://{target}:{port}/readyz", timeout=5)
            routed = answer.status_code == 200 and answer.headers.get("content-type", "").startswith("application/json")
        except requests.RequestException:
            routed = False
        answered = answered + 1 if routed else 0
        time.sleep(0.02)


def running_ingress_replicas() -> int:
    """How many replicas of the ingress Serve has running."""
    from ray import serve

    from serve.app import APP_NAME

    application = serve.status().applications.get(APP_NAME)
    deployment = application.deployments.get("ClareAPI") if application is not None else None
    return 0 if deployment is None else deployment.replica_states.get("RUNNING", 0)


def serve_until_stopped(app_args: dict[str, Any], host: str, port: int, address: str | None, num_cpus: int | None,
                        own_session: bool = True) -> None:
    """Start the API (a local Ray unless `address` or RAY_ADDRESS names a cluster), answer until
    SIGINT or SIGTERM, then stop everything this process started. With a local Ray, and
    `own_session`, the server is a child in a session of its own (serve/server_session.py)."""
    import ray
    from ray import serve

    from jobs.cluster import connect
    from serve.app import APP_NAME, run, serve_environment
    from serve.stopping import DRAIN_S, start_stop_notice, stop_and_wait_drained

    local = not (address or os.environ.get("RAY_ADDRESS"))
    if local:
        check_port_free(host, port)
        if own_session and server_session.available():
            server_session.run_server({"app_args": app_args, "host": host, "port": port, "address": None,
                                       "num_cpus": num_cpus})
            return
        for name, value in (serve_environment() | LOCAL_DRAINING).items():  # for the local Ray started below
            os.environ.setdefault(name, value)
    watchdog = Watchdog(port) if local else None
    try:
        connect(address, num_cpus)
        stop = StopSignal()  # after Ray's start, whose own SIGTERM handler would end the process at once
        notice_name, notice = start_stop_notice()
        run(app_args | {"stop_notice": notice_name}, host=host, port=port)
        wait_until_routed(host, port)
        drain_s = app_args.get("drain_s") or DRAIN_S
        print(f"ready on http://{host}:{port}; Ctrl-C or SIGTERM stops (in-flight requests get up to {drain_s} s)", flush=True)
        stop.wait()
        log.info("draining: the ingress answers new requests 503; those it holds get up to %s s", drain_s)
        drained, replicas = stop_and_wait_drained(notice, running_ingress_replicas, drain_s)
        log.info("drained: %d of %d ingress replicas", drained, replicas)
        if drained < replicas:
            log.warning("%d of %d ingress replicas still answering after %s s; Serve gives them up to %s s more",
                        replicas - drained, replicas, drain_s, drain_s)
        # The application before Serve, while the proxy still carries the answers back: shutting
        # Serve down at once would stop the proxy under any request still running.
        serve.delete(APP_NAME)
        serve.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if watchdog is not None:
            watchdog.close()
    log.info("stopped: Serve%s", " and the local Ray" if local else "")
