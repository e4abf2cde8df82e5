"""Latency-bounded admission: a request that cannot start its work within the queue-wait budget
is refused at once (503 with Retry-After) instead of joining a queue that only grows.

Without it an overloaded server answers everything, late: at four times its capacity the queue
grows until every answer takes longer than the client waits, while the server looks healthy.
Here each ingress replica works on at most `slots` requests at once (its scan workers in
topology single) and holds the others in a FIFO, each with a deadline of arrival + budget:

- at arrival, a request whose expected wait — the requests ahead of it, at the current service
  rate — is over the budget less a margin is refused at once, before its body is read;
- a request still waiting at its deadline (the rate was misjudged, or work got slower) is refused
  then, so no admitted request waits longer than the budget.

The service rate is the lower of `slots / work time` (the work time a moving average of the time
requests held a slot) and, while requests queue, the rate at which slots were handed over to
them (which also counts the gaps between one request's end and the next one's start). Neither
depends on the offered load, so the estimate is as good at 4x capacity as at 0.5x. The margin is
one request's work time or 15 % of the budget, whichever is more (at most half the budget): an
estimate is never exact, and without it a
queue filled to the budget sent a few percent of its refusals at their deadline, seconds late,
and kept every answer's wait at the budget (benchmarks/bench_overload.py). Retry-After is the
time the requests now queued take to start at that rate, at least one second. Everything here runs on the replica's
event loop (one thread), so no lock is needed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Literal

from clare_dist.errors import ClareError

# Why a request was refused: its expected wait at arrival was over the budget, or it waited the
# budget without getting a slot.
ShedReason = Literal["at_arrival", "waited_past_budget"]
SHED_REASONS: tuple[ShedReason, ...] = ("at_arrival", "waited_past_budget")
WORK_AVERAGING = 0.1  # weight of the newest work time in the moving average (about the last 10 requests)
# The share of the budget an expected wait must leave at least: on a loaded 2-core machine the
# measured service rate moved by ~10 % with the offered load (bench_overload.py).
MARGIN_SHARE = 0.15
OVERLOADED_FOR_S = 10.0  # a replica that shed within this long reads as overloaded


class Overloaded(ClareError):
    """A request refused because it could not start within the queue-wait budget: answered 503
    with Retry-After, before any work is spent on it."""

    def __init__(self, reason: ShedReason, retry_after_s: int, expected_wait_s: float, budget_s: float) -> None:
        self.reason, self.retry_after_s, self.expected_wait_s, self.budget_s = reason, retry_after_s, expected_wait_s, budget_s
        super().__init__(f"the server is at capacity: this scan would wait {expected_wait_s:.1f} s to start, over the "
                         f"{budget_s:g} s queue-wait budget; retry in {retry_after_s} s")


@dataclass(frozen=True)
class AdmissionState:
    """What readiness and the metrics report: how busy the replica is and what it refused."""

    slots: int
    busy: int
    queued: int
    budget_s: float
    expected_wait_s: float
    service_rate_per_s: float | None
    shed: dict[str, int]
    overloaded: bool


class Admission:
    """The admission gate of one ingress replica: `async with gate.slot(): work` (raises Overloaded)."""

    def __init__(self, slots: int, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if slots < 1 or budget_s <= 0:
            raise ValueError(f"admission needs at least one slot and a positive budget; got {slots} slots, {budget_s} s")
        self.slots, self.budget_s, self.clock = slots, budget_s, clock
        self.busy = 0
        self.waiting: deque[asyncio.Future] = deque()
        self.work_s: float | None = None  # unknown until a request has finished: until then no refusal at arrival
        self.handover_s: float | None = None  # moving average of the time between hand-overs while requests queue
        self.last_handover: float | None = None
        self.shed = dict.fromkeys(SHED_REASONS, 0)
        self.last_shed: float | None = None

    def service_rate(self) -> float | None:
        """Requests started per second while every slot is busy."""
        if self.work_s is None:
            return None
        rate = self.slots / max(self.work_s, 1e-6)
        return rate if self.handover_s is None else min(rate, 1 / max(self.handover_s, 1e-6))

    def margin_s(self) -> float:
        """How much of the budget an arrival's expected wait must leave: one request's work, and
        at least MARGIN_SHARE of the budget (at most half of it)."""
        return 0.0 if self.work_s is None else min(max(self.work_s, MARGIN_SHARE * self.budget_s), self.budget_s / 2)

    def expected_wait_s(self) -> float:
        """How long a request arriving now would wait for a slot: none while one is free, else the
        requests ahead of it and itself at the service rate (0 while the rate is unknown)."""
        if self.busy < self.slots and not self.waiting:
            return 0.0
        rate = self.service_rate()
        return 0.0 if rate is None else (len(self.waiting) + 1) / rate

    def retry_after_s(self) -> int:
        """Seconds until the requests now queued have started, at least 1 (Retry-After is whole seconds)."""
        return max(1, math.ceil(self.expected_wait_s()))

    def check(self) -> float:
        """Refuse a request arriving now whose expected wait is over the budget, before its body
        is read; returns its arrival time for `slot`."""
        arrival = self.clock()
        if self.expected_wait_s() > self.budget_s - self.margin_s():
            self._refuse("at_arrival")
        return arrival

    @asynccontextmanager
    async def slot(self, arrival: float | None = None) -> AsyncIterator[float]:
        """Hold a slot for the work of one request that arrived at `arrival` (default: now), or
        raise Overloaded; yields the seconds it waited for the slot."""
        arrival = self.clock() if arrival is None else arrival
        if self.busy < self.slots and not self.waiting:
            self.busy += 1
        else:
            if self.expected_wait_s() > arrival + self.budget_s - self.margin_s() - self.clock():
                self._refuse("at_arrival")
            await self._wait_for_slot(arrival)
        start = self.clock()
        try:
            yield start - arrival
        finally:
            worked = self.clock() - start
            self.work_s = worked if self.work_s is None else self.work_s + WORK_AVERAGING * (worked - self.work_s)
            self._release()

    def state(self) -> AdmissionState:
        now = self.clock()
        recently = self.last_shed is not None and now - self.last_shed < OVERLOADED_FOR_S
        wait = self.expected_wait_s()
        return AdmissionState(self.slots, self.busy, len(self.waiting), self.budget_s, wait, self.service_rate(),
                              dict(self.shed), recently or wait > self.budget_s)

    async def _wait_for_slot(self, arrival: float) -> None:
        """Queue until a finishing request hands its slot over, or refuse at the deadline."""
        handed = asyncio.get_running_loop().create_future()
        self.waiting.append(handed)
        try:
            await asyncio.wait({handed}, timeout=max(0.0, arrival + self.budget_s - self.clock()))
        except BaseException:  # cancelled (the client went away): give back a slot handed meanwhile
            self._abandon(handed)
            raise
        if not handed.done():
            self._abandon(handed)
            self._refuse("waited_past_budget")

    def _abandon(self, handed: asyncio.Future) -> None:
        if handed.done() and not handed.cancelled():
            self._release()  # the slot came just as the request gave up: pass it on
        else:
            handed.cancel()
            self.waiting.remove(handed)

    def _release(self) -> None:
        """Hand the slot to the oldest waiting request, or free it."""
        while self.waiting:
            handed = self.waiting.popleft()
            if not handed.done():
                handed.set_result(None)
                self._handed_over()
                return
        self.busy -= 1
        self.last_handover = None  # the queue ran dry: the next hand-over's interval is not the service's

    def _handed_over(self) -> None:
        now = self.clock()
        if self.last_handover is not None:
            interval = now - self.last_handover
            self.handover_s = interval if self.handover_s is None else self.handover_s + WORK_AVERAGING * (interval - self.handover_s)
        self.last_handover = now if self.waiting else None

    def _refuse(self, reason: ShedReason) -> None:
        self.shed[reason] += 1
        self.last_shed = self.clock()
        raise Overloaded(reason, self.retry_after_s(), self.expected_wait_s(), self.budget_s)
