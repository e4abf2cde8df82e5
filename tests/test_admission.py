"""Latency-bounded admission (serve/admission.py), on the event loop without Ray: a free slot
admits at once, a queue within the budget waits its turn in order, an expected wait over the
budget is refused at arrival, a wait that runs past the budget is refused then, and Retry-After
follows the service rate."""

from __future__ import annotations

import asyncio

import pytest

from serve.admission import Admission, Overloaded


class Clock:
    """A clock the test moves: the work times and so the service rate are exactly what it says."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def hold(gate: Admission, release: asyncio.Event, log: list, name: str, arrival: float | None = None) -> None:
    async with gate.slot(arrival):
        log.append(name)
        await release.wait()


def test_free_slots_admit_at_once_and_the_queue_starts_in_order():
    async def scenario():
        gate = Admission(slots=2, budget_s=5.0)
        release = asyncio.Event()
        started: list[str] = []
        tasks = [asyncio.create_task(hold(gate, release, started, name)) for name in "abcde"]
        await asyncio.sleep(0.01)
        assert started == ["a", "b"] and (gate.busy, len(gate.waiting)) == (2, 3)
        release.set()
        await asyncio.gather(*tasks)
        return gate, started

    gate, started = asyncio.run(scenario())
    assert started == list("abcde")
    assert (gate.busy, len(gate.waiting)) == (0, 0) and gate.shed == {"at_arrival": 0, "waited_past_budget": 0}


def test_an_expected_wait_over_the_budget_less_one_work_time_is_refused_at_arrival_with_retry_after_from_the_rate():
    async def scenario():
        clock = Clock()
        gate = Admission(slots=2, budget_s=2.0, clock=clock)
        async with gate.slot():  # one request that took 0.5 s: 2 slots / 0.5 s = 4 requests a second
            clock.now += 0.5
        assert gate.service_rate() == pytest.approx(4.0) and gate.margin_s() == pytest.approx(0.5)
        release = asyncio.Event()
        log: list[str] = []
        tasks = [asyncio.create_task(hold(gate, release, log, str(i))) for i in range(8)]
        await asyncio.sleep(0.01)
        # 2 working, 6 waiting: the 6th expected (5 + 1) / 4 = 1.5 s, the budget less the margin;
        # a 7th would wait 1.75 s
        assert (gate.busy, len(gate.waiting)) == (2, 6)
        assert gate.expected_wait_s() == pytest.approx(1.75)
        with pytest.raises(Overloaded) as refused:
            gate.check()
        release.set()
        await asyncio.gather(*tasks)
        return gate, refused.value

    gate, refused = asyncio.run(scenario())
    assert refused.reason == "at_arrival" and refused.retry_after_s == 2
    assert "over the 2 s queue-wait budget; retry in 2 s" in str(refused)
    assert gate.shed["at_arrival"] == 1


def test_the_rate_is_the_slower_of_the_work_time_and_the_hand_overs_while_requests_queue():
    """Gaps between one request's end and the next one's start count: a queue of requests that
    each work 0.5 s but start 1 s apart is served at one a second, not two."""
    async def scenario():
        clock = Clock()
        gate = Admission(slots=1, budget_s=10.0, clock=clock)
        async with gate.slot():
            clock.now += 0.5
        releases = [asyncio.Event() for _ in range(3)]
        tasks = [asyncio.create_task(hold(gate, release, [], str(i))) for i, release in enumerate(releases)]
        await asyncio.sleep(0.01)
        for release in releases[:2]:
            clock.now += 1.0
            release.set()
            await asyncio.sleep(0.01)
        measured = gate.service_rate()
        releases[2].set()
        await asyncio.gather(*tasks)
        return gate, measured

    gate, measured = asyncio.run(scenario())
    assert measured == pytest.approx(1.0) and gate.handover_s == pytest.approx(1.0)
    assert gate.last_handover is None  # the queue ran dry: no interval spans the idle time after it


def test_a_request_still_waiting_at_its_deadline_is_refused_then():
    async def scenario():
        gate = Admission(slots=1, budget_s=0.05)  # the rate is unknown: nothing is refused at arrival
        release = asyncio.Event()
        log: list[str] = []
        holder = asyncio.create_task(hold(gate, release, log, "holder"))
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(Overloaded) as refused:
            async with gate.slot():
                pass
        waited = loop.time() - start
        release.set()
        await holder
        return gate, refused.value, waited

    gate, refused, waited = asyncio.run(scenario())
    assert refused.reason == "waited_past_budget" and refused.retry_after_s >= 1
    assert 0.04 <= waited < 1.0
    assert (gate.busy, len(gate.waiting)) == (0, 0) and gate.shed["waited_past_budget"] == 1


def test_the_time_spent_reading_the_body_counts_against_the_budget():
    """`check` at arrival, then the body, then `slot(arrival)`: the deadline runs from arrival."""
    async def scenario():
        clock = Clock()
        gate = Admission(slots=1, budget_s=1.0, clock=clock)
        async with gate.slot():
            clock.now += 0.4  # 2.5 requests a second
        release = asyncio.Event()
        log: list[str] = []
        holder = asyncio.create_task(hold(gate, release, log, "holder"))
        await asyncio.sleep(0.01)
        arrival = gate.check()  # 0.4 s expected: admitted
        clock.now += 0.7  # its body took 0.7 s: 0.3 s of the budget left, under the 0.4 s wait
        with pytest.raises(Overloaded) as refused:
            async with gate.slot(arrival):
                pass
        release.set()
        await holder
        return refused.value

    assert asyncio.run(scenario()).reason == "at_arrival"


def test_a_client_that_goes_away_while_queued_gives_its_place_up():
    async def scenario():
        gate = Admission(slots=1, budget_s=5.0)
        release = asyncio.Event()
        log: list[str] = []
        holder = asyncio.create_task(hold(gate, release, log, "holder"))
        await asyncio.sleep(0.01)
        leaver = asyncio.create_task(hold(gate, release, log, "leaver"))
        stayer = asyncio.create_task(hold(gate, release, log, "stayer"))
        await asyncio.sleep(0.01)
        leaver.cancel()
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(holder, stayer)
        return gate, log, leaver

    gate, log, leaver = asyncio.run(scenario())
    assert leaver.cancelled() and log == ["holder", "stayer"]
    assert (gate.busy, len(gate.waiting)) == (0, 0)


def test_state_reads_overloaded_after_shedding():
    async def scenario():
        clock = Clock()
        gate = Admission(slots=1, budget_s=0.5, clock=clock)
        async with gate.slot():
            clock.now += 1.0  # 1 request a second: a second request would wait 1 s
        assert not gate.state().overloaded
        release = asyncio.Event()
        holder = asyncio.create_task(hold(gate, release, [], "holder"))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            gate.check()
        shedding = gate.state()
        release.set()
        await holder
        clock.now += 60
        return shedding, gate.state()

    shedding, later = asyncio.run(scenario())
    assert shedding.overloaded and shedding.shed == {"at_arrival": 1, "waited_past_budget": 0}
    assert shedding.expected_wait_s == pytest.approx(1.0) and shedding.service_rate_per_s == pytest.approx(1.0)
    assert not later.overloaded and later.shed["at_arrival"] == 1


def test_a_gate_needs_a_slot_and_a_budget():
    with pytest.raises(ValueError):
        Admission(slots=0, budget_s=1.0)
    with pytest.raises(ValueError):
        Admission(slots=1, budget_s=0)
