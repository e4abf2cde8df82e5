"""bench_serve's load on the running app: C = 1 in pairs of blocks against in-process screening,
and the asyncio + aiohttp load generator at each concurrency, with the Server-Timing stages and
the CPU each answer cost by process."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
from common import summary_ms
from cpu_sampler import CpuSampler
from serve_baseline import STAGES

SERVED_STAGES = ("queue", *STAGES)  # queue: waiting for a scan worker (topology single); nothing in-process


def paired_overhead(url: str, bundle_path: Path, bodies: list[bytes], requests: int, threads: int | None,
                    spinning: bool, block: int = 10) -> dict:
    """The overhead at C=1 measured in pairs of blocks: `block` scans screened in this process,
    then `block` posted to the app back to back (which side goes first alternates), the first of
    each block unrecorded, so both sides see the same minute of the machine. On a shared VM the
    speed drifts by 20% between minutes, more than the overhead being measured. The in-process
    side uses the regressor's ORT settings, so the difference is the serving path's."""
    import http.client
    import urllib.parse

    from clare_dist.bundle import load_bundle
    from clare_dist.screening import Screener

    screener = Screener(load_bundle(bundle_path), threads=threads, spinning=spinning)
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)

    def post(body: bytes) -> None:
        connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "image/png"})
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise SystemExit(f"POST /v1/predict answered {response.status}: {answer[:300]!r}")

    def screen(body: bytes) -> None:
        screener.screen([body])

    times: dict[str, list[float]] = {"in_process": [], "http": []}
    blocks = max(1, -(-requests // (block - 1)))
    for pair in range(blocks):
        sides = (("in_process", screen), ("http", post)) if pair % 2 else (("http", post), ("in_process", screen))
        for side, work in sides:
            for i in range(block):
                body = bodies[(pair * block + i) % len(bodies)]
                start = time.perf_counter()
                work(body)
                if i:
                    times[side].append(time.perf_counter() - start)
    connection.close()
    local, served = summary_ms(times["in_process"]), summary_ms(times["http"])
    return {"requests": len(times["http"]), "block": block, "ort_threads": threads, "ort_spinning": spinning,
            "in_process": local, "http": served, "overhead_p50_ms": served["p50_ms"] - local["p50_ms"],
            "overhead_mean_ms": served["mean_ms"] - local["mean_ms"]}


def print_paired(paired: dict) -> None:
    local, served = paired["in_process"], paired["http"]
    print(f"C=1 paired ({paired['requests']} scans a side, in alternating blocks of {paired['block']}): in-process p50 "
          f"{local['p50_ms']:.1f} ms, HTTP p50 {served['p50_ms']:.1f} ms: overhead p50 {paired['overhead_p50_ms']:+.1f} ms, "
          f"mean {paired['overhead_mean_ms']:+.1f} ms")


async def load_level(url: str, bodies: list[bytes], concurrency: int, duration: float, warmup: float,
                     timeout: float, honour_retry_after: bool = True) -> dict:
    """C workers posting scans back to back: a warm-up, then `duration` s recorded.

    A worker answered 503 waits its Retry-After before posting again, as the API asks of every
    client (and as a client that retries later does); with `honour_retry_after` off it posts at
    once, a storm of refusals whose own CPU, on the cores that serve, is then part of the figure."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        turn = itertools.count()
        records: list[tuple[float, object, str | None]] = []

        async def worker(until: float, record: bool) -> None:
            while time.perf_counter() < until:
                body = bodies[next(turn) % len(bodies)]
                start = time.perf_counter()
                try:
                    async with http.post(f"{url}/v1/predict", data=body, headers={"Content-Type": "image/png"}) as response:
                        await response.read()
                        status, timing = response.status, response.headers.get("server-timing")
                        retry_after = response.headers.get("retry-after")
                except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                    status, timing, retry_after = type(err).__name__, None, None
                if record:
                    records.append((time.perf_counter() - start, status, timing))
                if honour_retry_after and status == 503 and retry_after:
                    await asyncio.sleep(min(float(retry_after), max(0.0, until - time.perf_counter())))

        await asyncio.gather(*(worker(time.perf_counter() + warmup, False) for _ in range(concurrency)))
        sampler = CpuSampler()
        sampler.start_counting()
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(wall + duration, True) for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sampled = sampler.stop(os.cpu_count() or 1)
    return level_summary(records, concurrency, wall, cpu) | {"cpu": sampled}


def level_summary(records: list[tuple[float, object, str | None]], concurrency: int, wall: float, cpu: float) -> dict:
    """Latency of the 200s, throughput, errors by status and the Server-Timing stage means."""
    ok = [r for r in records if r[1] == 200]
    stages: dict[str, list[float]] = {}
    for _, _, header in ok:
        for stage, ms in parse_server_timing(header).items():
            stages.setdefault(stage, []).append(ms)
    latency = summary_ms([r[0] for r in ok])
    stage_means = {stage: float(np.mean(values)) for stage, values in stages.items()}
    return {
        "concurrency": concurrency, "seconds": wall, "requests": len(records), "ok": len(ok),
        "statuses": {str(k): v for k, v in Counter(r[1] for r in records).items()},
        "req_s": len(ok) / wall, "latency": latency, "server_timing_mean_ms": stage_means,
        "outside_stages_mean_ms": latency.get("mean_ms", float("nan")) - sum(stage_means.get(s, 0.0) for s in SERVED_STAGES),
        "client_cpu_share": cpu / wall,
    }


def parse_server_timing(header: str | None) -> dict[str, float]:
    """'decode;dur=12.30, regress;dur=50.10' → {'decode': 12.3, 'regress': 50.1} (ms)."""
    stages = {}
    for entry in (header or "").split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                stages[name] = float(value)
    return stages


def print_levels(levels: list[dict]) -> None:
    print(f"\n{'C':>3} {'ok':>5} {'errors':>16} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} | "
          + " ".join(f"{s:>8}" for s in SERVED_STAGES) + f" {'outside':>8} | client CPU")
    for level in levels:
        lat = level["latency"]
        errors = ",".join(f"{k}:{v}" for k, v in level["statuses"].items() if k != "200") or "-"
        timing = level["server_timing_mean_ms"]
        stages = " ".join(f"{timing[s]:8.1f}" if s in timing else f"{'-':>8}" for s in SERVED_STAGES)
        print(f"{level['concurrency']:3d} {level['ok']:5d} {errors:>16} {level['req_s']:7.2f} "
              f"{lat.get('p50_ms', float('nan')):8.1f} {lat.get('p99_ms', float('nan')):8.1f} "
              f"{lat.get('mean_ms', float('nan')):8.1f} | {stages} {level['outside_stages_mean_ms']:8.1f} | "
              f"{level['client_cpu_share']:.0%}")
    print("(stage columns: Server-Timing means in ms, each measured inside its stage (a Regressor deployment's includes "
          "its batch queue; queue: waiting for a scan worker, topology single); outside: mean latency minus them = proxy, "
          "ingress, the hops between stages, HTTP, client)")
    print("CPU per answered request, ms of core time by process (Ray's process titles; driver = this load generator):")
    for level in levels:
        if level["ok"]:
            spent = cpu_ms_per_request(level)
            top = ", ".join(f"{group} {ms:.1f}" for group, ms in list(spent.items())[:6])
            print(f"  C={level['concurrency']}: {sum(spent.values()):.1f} in all ({level['cpu']['utilisation']:.0%} of the "
                  f"machine busy): {top}")


def cpu_ms_per_request(level: dict) -> dict[str, float]:
    """The level's CPU seconds by process group, as ms of core time per answered request."""
    return {group: seconds / level["ok"] * 1e3 for group, seconds in level["cpu"]["cpu_s_by_group"].items()}
