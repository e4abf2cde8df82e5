"""The stop notice between `clare-dist serve` and its ingress replicas (serve/stopping.py), on the
session's Ray, with a replica's side run in this process: the replica learns of the stop, is
reported drained only once the requests it holds are done (a stop returns at its timeout saying
one is not), and a replica whose command was killed goes on answering."""

import asyncio

from conftest import connect_ray

from serve.stopping import Draining, start_stop_notice


async def watched(notice) -> None:
    while await notice.watching.remote() < 1:
        await asyncio.sleep(0.01)


def test_a_replica_is_drained_only_when_its_requests_are_done(ray_address):
    connect_ray(ray_address)
    name, notice = start_stop_notice()

    async def scenario() -> None:
        draining = Draining(name, drain_s=2.5)
        assert draining.retry_after_s == 3
        await watched(notice)
        draining.started()
        assert not draining.stopping
        assert await notice.stop_and_wait_drained.remote(0.5) == (0, 1)  # still answering one
        assert draining.stopping
        draining.finished()
        assert await notice.stop_and_wait_drained.remote(30) == (1, 1)

    asyncio.run(scenario())


def test_a_replica_whose_command_was_killed_goes_on_answering(ray_address):
    ray = connect_ray(ray_address)
    name, notice = start_stop_notice()

    async def scenario() -> None:
        draining = Draining(name, drain_s=10)
        await watched(notice)
        ray.kill(notice)
        await asyncio.wait_for(draining.watcher, timeout=30)
        assert not draining.stopping

    asyncio.run(scenario())


def test_without_a_notice_a_replica_never_stops_taking_requests():
    draining = Draining(None, drain_s=10)
    draining.started()
    draining.finished()
    assert not draining.stopping and draining.in_progress == 0
