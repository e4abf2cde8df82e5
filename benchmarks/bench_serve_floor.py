"""Serve's own cost on this machine: the latency of a request that does no work.

The serving chain's overhead target (≤ 10 ms over in-process work) is only meaningful above
what Ray Serve itself costs here. This app has a FastAPI ingress whose `/none` route answers
at once and whose `/chain` route passes a 256×256 array through three no-op deployments,
chained as serve/api.py chains its stages. p50(/none) is the floor of any Serve app on this
machine; (p50(/chain) − p50(/none)) / 3 is the cost of one hop between deployments.

    python benchmarks/bench_serve_floor.py                                  # Serve's default path
    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 python benchmarks/bench_serve_floor.py # the path clare-dist uses
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import ray
import requests
from fastapi import FastAPI, Request
from ray import serve

from common import machine, write_json

app = FastAPI()  # no `from __future__ import annotations` here: FastAPI must see `Request` itself
HOPS = 3


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class NoOp:
    def __call__(self, value):
        return value


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class Ingress:
    def __init__(self, first, second, third) -> None:
        self.stages = (first, second, third)

    @app.post("/none")
    async def none(self, request: Request) -> dict:
        return {"bytes": len(await request.body())}

    @app.post("/chain")
    async def chain(self, request: Request) -> dict:
        await request.body()
        first, second, third = self.stages
        scan = await third.remote(second.remote(first.remote(np.zeros((256, 256), np.uint8))))
        return {"pixels": int(scan.size)}


def latencies(url: str, body: bytes, requests_n: int, warmup: int) -> list[float]:
    with requests.Session() as session:
        timings = []
        for i in range(warmup + requests_n):
            start = time.perf_counter()
            session.post(url, data=body, timeout=60).raise_for_status()
            if i >= warmup:
                timings.append(time.perf_counter() - start)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_floor.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(Ingress.bind(NoOp.bind(), NoOp.bind(), NoOp.bind()))
    body = bytes(300 * 1024)  # the size of a 1024² CXR14 PNG
    p50 = {}
    for route in ("none", "chain"):
        timings = latencies(f"http://127.0.0.1:{args.port}/{route}", body, args.requests, warmup=10)
        p50[route] = statistics.median(timings) * 1000
        print(f"/{route}: p50 {p50[route]:.1f} ms, p90 {np.percentile(timings, 90) * 1000:.1f} ms")
    hop = (p50["chain"] - p50["none"]) / HOPS
    optimized = os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0")
    print(f"Serve floor {p50['none']:.1f} ms per request; one hop between deployments {hop:.1f} ms "
          f"(RAY_SERVE_THROUGHPUT_OPTIMIZED={optimized})")
    write_json({"benchmark": "Ray Serve's own per-request cost", "machine": machine(),
                "throughput_optimized": optimized, "p50_ms": p50, "hop_ms": hop}, args.out)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
