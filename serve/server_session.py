"""`clare-dist serve` on a local Ray runs the server in a session of its own; the command relays signals to it.

Ray starts its daemons (GCS, raylet, dashboard, log monitor) in the process group of whoever
calls `ray.init`. A SIGTERM sent to that whole group, as `timeout`, `kill -- -PGID`,
supervisord's `stopasgroup` and shell job control send it, then ends the GCS together with the
command: the drain cannot run (it goes through an actor), the command waits 60 s for a GCS that
is gone, exits 1, and HAProxy may be left holding the port. (Ctrl-C never had this problem:
Ray blocks SIGINT in its daemons.) So the command stays where it was started and only relays
SIGINT and SIGTERM, one for one, to the server: a child in a session of its own, which starts the
local Ray and stops as it would on its own signal. If the command is killed outright, the kernel
sends the server SIGTERM (a parent-death signal), and it stops the same way.

systemd is the exception no session escapes: its default `KillMode=control-group` signals every
process of the unit's cgroup at once, so a unit running `clare-dist serve` needs `KillMode=mixed`
(README).

Linux only (the parent-death signal); elsewhere the command is the server, as before.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from clare_dist.errors import ClareError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
REPO = Path(__file__).resolve().parents[1]  # where `serve` and `jobs` are importable from


class ServerExitedError(ClareError):
    """The server process of `clare-dist serve` ended with an error; its own messages are above."""


def available() -> bool:
    """Whether the server can run in a session of its own here."""
    return sys.platform.startswith("linux")


def run_server(settings: dict[str, Any]) -> None:
    """Run `serve.lifecycle.serve_until_stopped(**settings)` in a child in a new session, relaying
    SIGINT and SIGTERM to it until it has stopped; raise ServerExitedError if it failed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-m", "serve.server_session", str(os.getpid()), json.dumps(settings)],
                              env=env, start_new_session=True)

    def relay(signum: int, frame: Any) -> None:
        server.send_signal(signum)  # a no-op once the server has been waited for

    previous = {sig: signal.signal(sig, relay) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status != 0:
        how = f"signal {signal.Signals(-status).name}" if status < 0 else f"status {status}"
        raise ServerExitedError(f"the server (pid {server.pid}) ended with {how}; its messages are above")


def die_with(parent: int) -> None:
    """Be sent SIGTERM when `parent` ends, and end now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        log.warning("could not ask to be stopped with the command (prctl: %s); if it is killed outright, "
                    "stop this server (pid %d) with SIGTERM", os.strerror(ctypes.get_errno()), os.getpid())
    if os.getppid() != parent:
        sys.exit("clare-dist serve: the command ended before its server started")


def main(argv: list[str]) -> int:
    """The server: `python -m serve.server_session PARENT_PID SETTINGS_JSON`."""
    from clare_dist.cli import LOG_FORMAT, USER_ERRORS
    from serve.lifecycle import serve_until_stopped

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    die_with(int(argv[0]))
    try:
        serve_until_stopped(**json.loads(argv[1]), own_session=False)
    except USER_ERRORS as exc:
        print(f"clare-dist serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
