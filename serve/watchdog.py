"""The watchdog of `clare-dist serve`: whatever the command started ends with it, even when the
command is killed outright (SIGKILL, an OOM kill, a closed terminal).

Ray's own daemons die with the process that started them (they have a parent-death signal),
and its workers follow within seconds; but the HAProxy that Serve's HAProxyManager actor spawns
has none, and outlives them all, holding the port. So `clare-dist serve` starts this script in
a session of its own (a signal to the command's process group does not reach it), with a pipe
from the command on its stdin. Every half second it notes the command's descendants (pid and
start time, so a reused pid is never taken for one of them). When the pipe closes — the
command has finished its own stop, or has been killed — it gives them a grace period to end by
themselves, then terminates (and after a few seconds kills) those still running, their children,
and any HAProxy listening on the command's port that was started after the command (the
HAProxyManager actor reloads HAProxy, a new process, when a replica goes: it may do so after the
command has died, while its raylet is going down).

Run as a script (`python serve/watchdog.py PID PORT`), not as part of the package: it imports
nothing but psutil, so it starts fast and works whatever the command's import path was.
"""

from __future__ import annotations

import os
import select
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 5.0  # for Ray's workers to notice their raylet is gone, and a clean stop to finish
TERM_S = 3.0  # between SIGTERM and SIGKILL


def descendants(parent: psutil.Process) -> dict[int, float]:
    """pid → start time of the process's descendants now (this watchdog excluded)."""
    found = {}
    try:
        children = parent.children(recursive=True)
    except psutil.Error:
        return found
    for child in children:
        try:
            if child.pid != os.getpid():
                found[child.pid] = child.create_time()
        except psutil.Error:
            continue
    return found


def port_holders(port: int, since: float) -> dict[int, float]:
    """pid → start time of the HAProxy processes listening on `port` that started after `since`."""
    found = {}
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status != psutil.CONN_LISTEN or connection.laddr.port != port or connection.pid is None:
            continue
        try:
            process = psutil.Process(connection.pid)
            if "haproxy" in process.name() and process.create_time() >= since:
                found[process.pid] = process.create_time()
        except psutil.Error:
            continue
    return found


def running(tracked: dict[int, float]) -> list[psutil.Process]:
    """The tracked processes still running (a zombie has ended: it holds no port and no memory)."""
    alive = []
    for pid, started in tracked.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            continue
    return alive


def end(tracked: dict[int, float], port: int, since: float) -> list[str]:
    """Wait the grace period for the tracked processes to end, then terminate and kill the rest;
    returns what had to be ended, as 'name (pid)'. Meanwhile their new children and the port's
    HAProxy are tracked too: Serve's HAProxyManager, until its raylet is gone, reloads HAProxy
    (a new process) whenever a replica goes."""
    def grow() -> list[psutil.Process]:
        for process in running(tracked):
            tracked.update(descendants(process))
        tracked.update(port_holders(port, since))
        return running(tracked)

    deadline = time.monotonic() + GRACE_S
    while grow() and time.monotonic() < deadline:
        time.sleep(0.2)
    ended = []
    for _ in range(3):  # a reload may start one more HAProxy while the others end
        alive = grow()
        if not alive:
            break
        for process in alive:
            try:
                ended.append(f"{process.name()} ({process.pid})")
                process.terminate()
            except psutil.Error:
                continue
        _, left = psutil.wait_procs(alive, timeout=TERM_S)
        for process in left:
            try:
                process.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(left, timeout=TERM_S)
    return ended


def watch(parent_pid: int, port: int) -> None:
    try:
        parent = psutil.Process(parent_pid)
        since = parent.create_time()
    except psutil.Error:
        return
    tracked: dict[int, float] = {}
    while True:
        tracked |= descendants(parent)
        readable, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if readable and not os.read(sys.stdin.fileno(), 64):
            break  # the pipe closed: the command has stopped, or was killed
    ended = end(tracked, port, since)
    if ended:
        print(f"clare-dist serve watchdog: ended what the stopped command left running: {', '.join(ended)}",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
