"""The stop notice between `clare-dist serve` and its ingress replicas (serve/stopping.py), on the
session's Ray, with a replica's side run in this process: the replica learns of the stop, is
reported drained only once the requests it holds are done (a stop returns at its timeout saying
one is not), a replica Serve no longer runs is not waited for, and a replica whose command was
killed goes on answering."""

import asyncio
import time

from conftest import connect_ray

from serve.stopping import Draining, start_stop_notice, stop_and_wait_drained


async def until(condition, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.01)


def test_a_replica_is_drained_only_when_its_requests_are_done(ray_address):
    connect_ray(ray_address)
    name, notice = start_stop_notice()

    async def scenario() -> None:
        draining = Draining(name, drain_s=2.5)
        assert draining.retry_after_s == 3
        draining.started()
        assert not draining.stopping
        stopped_at = time.monotonic()
        result = await asyncio.to_thread(stop_and_wait_drained, notice, lambda: 1, 1.0)
        assert result == (0, 1) and time.monotonic() - stopped_at >= 1.0  # still answering one: the timeout
        await until(lambda: draining.stopping)
        draining.finished()
        assert await asyncio.to_thread(stop_and_wait_drained, notice, lambda: 1, 30) == (1, 1)
        # Two replicas counted by Serve, one drained: waited for until Serve runs only one.
        running = [2]
        waiting = asyncio.create_task(asyncio.to_thread(stop_and_wait_drained, notice, lambda: running[0], 30))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        running[0] = 1
        assert await waiting == (1, 1)

    asyncio.run(scenario())


def test_a_replica_whose_command_was_killed_goes_on_answering(ray_address):
    ray = connect_ray(ray_address)
    name, notice = start_stop_notice()

    async def scenario() -> None:
        draining = Draining(name, drain_s=10)
        await asyncio.sleep(0.5)  # its call to the notice under way (if not, the kill fails it all the same)
        ray.kill(notice)
        await asyncio.wait_for(draining.watcher, timeout=30)
        assert not draining.stopping

    asyncio.run(scenario())


def test_without_a_notice_a_replica_never_stops_taking_requests():
    draining = Draining(None, drain_s=10)
    draining.started()
    draining.finished()
    assert not draining.stopping and draining.watcher is None and draining.in_progress == 0
