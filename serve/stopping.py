"""Stopping without a misleading answer: the ingress replicas are told before the app is deleted.

Deleting the application removes its route at once, so a request reaching the proxy after
that is answered 404 (no such route), which reads to a client as a wrong URL, not as a server
going away. So `clare-dist serve`, on SIGINT or SIGTERM, first sets a stop notice (a small
actor it owns). Each ingress replica then answers new /v1 requests 503 `stopping` with
Retry-After and its readiness 503 (state `stopping`), lets the requests it holds finish, and
reports once it has none left; the command deletes the application when as many have reported
as Serve has ingress replicas running, or after the drain time. Serve has no broadcast to replicas, so each replica keeps
one call to the notice open from its start, and the notice answers them all at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import Callable

import ray

log = logging.getLogger("ray.serve")

NAMESPACE = "clare-dist"
# How long a stopping ingress replica lets the requests it admitted finish: at most the queue-wait
# budget waiting plus their work, with room for a figure (/v1/predict/plot).
DRAIN_S = 10.0
DRAINED_POLL_S = 0.1


@ray.remote(num_cpus=0)
class StopNotice:
    """The command's side: replicas wait on it to learn of the stop, then say when they have drained."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.drained: set[str] = set()

    async def wait_for_stop(self) -> None:
        await self.stopping.wait()

    async def stop(self) -> None:
        self.stopping.set()

    async def report_drained(self, replica: str) -> None:
        self.drained.add(replica)

    async def drained_count(self) -> int:
        return len(self.drained)


def start_stop_notice() -> tuple[str, ray.actor.ActorHandle]:
    """A stop notice under a name of its own (two commands joined to one cluster do not share one)."""
    name = f"clare-dist-stop-{uuid.uuid4().hex[:12]}"
    return name, StopNotice.options(name=name, namespace=NAMESPACE).remote()


def stop_and_wait_drained(notice: ray.actor.ActorHandle, replicas: Callable[[], int], timeout_s: float) -> tuple[int, int]:
    """Tell every replica; return (drained, running) once as many have drained as `replicas()`
    says are running (Serve's count: a replica scaled down or replaced meanwhile is not waited
    for), or after `timeout_s`."""
    ray.get(notice.stop.remote())
    deadline = time.monotonic() + timeout_s
    while True:
        drained, running = ray.get(notice.drained_count.remote()), replicas()
        if drained >= running or time.monotonic() >= deadline:
            return drained, running
        time.sleep(DRAINED_POLL_S)


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
            await self._notice.wait_for_stop.remote()
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
