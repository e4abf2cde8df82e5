"""Stopping without a misleading answer: the ingress replicas are told before the app is deleted.

Deleting the application removes its route at once, so a request reaching the proxy after
that is answered 404 (no such route), which reads to a client as a wrong URL, not as a server
going away. So `clare-dist serve`, on SIGINT or SIGTERM, first sets a stop notice (a small
actor it owns). Each ingress replica then answers new /v1 requests 503 `stopping` with
Retry-After and its readiness 503 (state `stopping`), lets the requests it holds finish, and
reports once it has none left; the command deletes the application when every replica has
reported, or after the drain time. Serve has no broadcast to replicas, so each replica keeps
one call to the notice open from its start, and the notice answers them all at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid

import ray

log = logging.getLogger("ray.serve")

NAMESPACE = "clare-dist"
DRAINED_POLL_S = 0.05


@ray.remote(num_cpus=0)
class StopNotice:
    """The command's side: replicas wait on it to learn of the stop, then say when they have drained."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.replicas: set[str] = set()
        self.drained: set[str] = set()

    async def wait_for_stop(self, replica: str) -> None:
        self.replicas.add(replica)
        await self.stopping.wait()

    async def watching(self) -> int:
        """How many replicas have called in (for a look from outside)."""
        return len(self.replicas)

    async def report_drained(self, replica: str) -> None:
        self.drained.add(replica)

    async def stop_and_wait_drained(self, timeout_s: float) -> tuple[int, int]:
        """Tell every replica; return (drained, replicas) once all have drained or after `timeout_s`."""
        self.stopping.set()
        deadline = time.monotonic() + timeout_s
        while not self.replicas <= self.drained and time.monotonic() < deadline:
            await asyncio.sleep(DRAINED_POLL_S)
        return len(self.replicas & self.drained), len(self.replicas)


def start_stop_notice() -> tuple[str, ray.actor.ActorHandle]:
    """A stop notice under a name of its own (two commands joined to one cluster do not share one)."""
    name = f"clare-dist-stop-{uuid.uuid4().hex[:12]}"
    return name, StopNotice.options(name=name, namespace=NAMESPACE).remote()


class Draining:
    """One ingress replica's side: whether it is stopping, and how many requests it is answering.

    Without a notice (an application that Serve's config runs, as the RayService does) it never
    stops taking requests: there Kubernetes drains the pod.
    """

    def __init__(self, notice: str | None, drain_s: float) -> None:
        self.stopping = False
        self.in_progress = 0
        self.retry_after_s = max(1, math.ceil(drain_s))
        self._notice = None if notice is None else ray.get_actor(notice, namespace=NAMESPACE)
        self._replica = uuid.uuid4().hex
        self._reported = False
        self.watcher: asyncio.Task | None = None  # the task that waits for the stop
        if self._notice is not None:  # the constructor runs on the replica's event loop
            self.watcher = asyncio.get_running_loop().create_task(self._watch())

    def started(self) -> None:
        self.in_progress += 1

    def finished(self) -> None:
        self.in_progress -= 1
        self._report_if_drained()

    async def _watch(self) -> None:
        try:
            await self._notice.wait_for_stop.remote(self._replica)
        except ray.exceptions.RayActorError:  # its command was killed: stopping the application is for whoever ends it now
            log.warning("the stop notice of clare-dist serve is gone (the command ended without stopping the application); "
                        "this replica goes on answering until the application is deleted")
            return
        self.stopping = True
        log.info("stopping: new requests are answered 503; %d still being answered", self.in_progress)
        self._report_if_drained()

    def _report_if_drained(self) -> None:
        if self.stopping and self.in_progress == 0 and not self._reported and self._notice is not None:
            self._reported = True
            self._notice.report_drained.remote(self._replica)
