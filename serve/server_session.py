"""`clare-dist serve` on a local Ray runs the server in a session of its own; the command relays signals to it.

Ray starts its daemons (GCS, raylet, dashboard, log monitor) in the process group of whoever
calls `ray.init`. A SIGTERM sent to that whole group, as `timeout`, `kill -- -PGID`,
supervisord's `stopasgroup` and shell job control send it, then ends the GCS together with the
command: the drain cannot run (it goes through an actor), the command waits 60 s for a GCS that
is gone, exits 1, and HAProxy may be left holding the port. (Ctrl-C never had this problem:
Ray blocks SIGINT in its daemons.) So the command stays where it was started and only relays
SIGINT and SIGTERM, one for one, to the server: a child in a session of its own, which starts the
local Ray and stops as it would on its own signal. If the command is killed outright, the server
sees the pipe it holds from the command close, and sends itself one SIGTERM. (Not the kernel's
parent-death signal: it is sent again for every thread of the dying parent, and a second SIGTERM
means "stop at once".)

systemd is the exception no session escapes: its default `KillMode=control-group` signals every
process of the unit's cgroup at once, so a unit running `clare-dist serve` needs `KillMode=mixed`
(README).

POSIX only (sessions); on Windows the command is the server, as before.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from clare_dist.errors import ClareError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]  # where `serve` and `jobs` are importable from


class ServerExitedError(ClareError):
    """The server process of `clare-dist serve` ended with an error; its own messages are above."""


def available() -> bool:
    """Whether the server can run in a session of its own here."""
    return os.name == "posix"


def run_server(settings: dict[str, Any]) -> None:
    """Run `serve.lifecycle.serve_until_stopped(**settings)` in a child in a new session, relaying
    SIGINT and SIGTERM to it until it has stopped; raise ServerExitedError if it failed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    alive, held = os.pipe()  # the server reads `alive`; it closes when this process ends, however it ends
    try:
        server = subprocess.Popen([sys.executable, "-m", "serve.server_session", str(alive), json.dumps(settings)],
                                  env=env, start_new_session=True, pass_fds=(alive,))
    finally:
        os.close(alive)

    def relay(signum: int, frame: Any) -> None:
        server.send_signal(signum)  # a no-op once the server has been waited for

    previous = {sig: signal.signal(sig, relay) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = server.wait()
    finally:
        os.close(held)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status != 0:
        how = f"signal {signal.Signals(-status).name}" if status < 0 else f"status {status}"
        raise ServerExitedError(f"the server (pid {server.pid}) ended with {how}; its messages are above")


def stop_when_closed(alive: int) -> None:
    """Send this process one SIGTERM when the command's end of the pipe `alive` closes."""
    def watch() -> None:
        while os.read(alive, 64):
            continue
        log.info("the command that started this server has ended: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="command-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    """The server: `python -m serve.server_session PIPE_FD SETTINGS_JSON`."""
    from clare_dist.cli import LOG_FORMAT, USER_ERRORS
    from serve.lifecycle import serve_until_stopped

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    stop_when_closed(int(argv[0]))
    try:
        serve_until_stopped(**json.loads(argv[1]), own_session=False)
    except USER_ERRORS as exc:
        print(f"clare-dist serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
