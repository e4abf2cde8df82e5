"""The API under more load than it can answer within its queue-wait budget: what cannot start in
time is answered 503 with Retry-After and the overloaded reason, everything else is a screening,
nothing else is answered (no other 5xx, no dropped connection), /healthz stays 200, /readyz says
overloaded (not down) and counts what it shed, as the Prometheus counter does.

Behaviour only: the latency thresholds (answered p99 within budget + 2x the work, a 503 within
100 ms) are benchmarks/bench_overload.py's, on a machine not shared with other work."""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from clare_dist.bundle import load_bundle

from conftest import connect_ray

BUDGET_S = 0.3
RATE = 120  # requests a second of a 1024x1024 PNG: several times what 2 cores decode
SECONDS = 3.0


@pytest.fixture(scope="module")
def shedding_app(ray_address, tiny_bundle):
    from ray import serve

    from conftest import start_serve
    from serve.app import APP_NAME, build_app

    connect_ray(ray_address)
    port = start_serve()
    serve.run(build_app({"bundle": str(tiny_bundle), "topology": "single", "max_queue_wait_s": BUDGET_S}),
              name=APP_NAME, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete(APP_NAME)


def full_size_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    return buffer.getvalue()


async def flood(url: str, body: bytes) -> tuple[list[tuple[object, dict, object]], int, dict]:
    """RATE requests a second for SECONDS, open loop (each sent when due, answered or not), with
    /healthz and /readyz asked half way through; (status, headers, body) of each."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=120)) as http:
        start = time.perf_counter()

        async def one(i: int):
            await asyncio.sleep(max(0.0, start + i / RATE - time.perf_counter()))
            try:
                async with http.post(f"{url}/v1/predict", data=body, headers={"Content-Type": "image/png"}) as response:
                    return response.status, dict(response.headers), await response.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                return type(err).__name__, {}, None

        async def probes():
            await asyncio.sleep(SECONDS / 2)
            async with http.get(f"{url}/healthz") as alive:
                alive_status = alive.status
            async with http.get(f"{url}/readyz") as ready:
                return alive_status, await ready.json()

        answers, (alive, ready) = await asyncio.gather(asyncio.gather(*(one(i) for i in range(int(RATE * SECONDS)))),
                                                       probes())
    return list(answers), alive, ready


def shed_metric(node_port: int) -> float:
    """clare_api_shed_requests summed over its reasons, from the node's Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{node_port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ray_clare_api_shed_requests_total{") or line.startswith("ray_clare_api_shed_requests{"))


def test_overload_is_shed_with_retry_after_and_every_other_scan_is_answered(shedding_app, tiny_bundle):
    import ray

    node_ports = [n["MetricsExportPort"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    shed_before = sum(shed_metric(p) for p in node_ports)  # the counter is the node's: earlier apps' sheds are in it
    answers, alive, ready = asyncio.run(flood(shedding_app, full_size_png()))
    statuses = Counter(status for status, _, _ in answers)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0, f"nothing was shed at {RATE} requests a second: {statuses}"
    assert statuses[200] > 0, statuses
    version = load_bundle(tiny_bundle).model_version
    for status, headers, body in answers:
        if status == 503:
            assert headers.get("Retry-After", "").isdigit() and int(headers["Retry-After"]) >= 1, headers
            assert body["error"] == "overloaded" and "queue-wait budget" in body["detail"], body
        else:
            assert body["model_version"] == version and body["decision"] and len(body["top3"]) == 3

    assert alive == 200
    assert ready["ready"] is True and ready["state"] == "overloaded", ready
    assert ready["queue"]["budget_s"] == BUDGET_S and ready["queue"]["slots"] >= 1

    shed = readiness(shedding_app)["queue"]["shed"]
    assert sum(shed.values()) == statuses[503], shed  # one replica: every 503 was its admission's
    flood_ended = time.monotonic()

    deadline, counted = time.monotonic() + 60, 0.0
    while time.monotonic() < deadline and (counted := sum(shed_metric(p) for p in node_ports) - shed_before) < statuses[503]:
        time.sleep(2)  # Ray exports metrics every few seconds
    assert counted == statuses[503]

    from serve.admission import OVERLOADED_FOR_S

    time.sleep(max(0.0, flood_ended + OVERLOADED_FOR_S + 1 - time.monotonic()))
    assert readiness(shedding_app)["state"] == "ready"


def readiness(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/readyz", timeout=30) as answer:
        return json.loads(answer.read())
