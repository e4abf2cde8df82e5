"""Benchmark of the serving chain: POST /v1/predict over real HTTP against the same work in-process.

DESIGN.md §3: the whole chain adds ≤ 10 ms over the same decode + inference done in one process
(at concurrency 1), and with dynamic batching its saturated throughput is ≥ 0.8× batched ONNX
Runtime throughput. Both use the ResNet50 bundle (untrained: latency does not depend on the
weights) with a case index, and the same 1024×1024 PNG scans (common.py says how they are made).

- In-process baseline: `Screener.screen([png bytes])` per request (decode + ORT at batch 1 +
  rules + lookup), p50/p99 after a warm-up, and the mean of each stage timed apart; batched ORT
  alone on `--max-batch-size` decoded scans (img/s), the saturation target's denominator: the
  better of one session with a thread per core and one single-thread session per core, whatever
  the app's own ORT settings.
- The app: `serve.app.run` on a local Ray (`jobs.cluster.connect`), proxy on loopback, no API
  token; ready when GET /readyz answers 200.
- C = 1, paired: blocks of 10 scans screened in-process (with the regressor's ORT settings)
  alternating with blocks posted to the app, `--paired-requests` recorded a side: the overhead
  figure held to the target, as both sides see the same minutes of the machine (a shared VM
  drifts more between minutes than the overhead measured).
- Load: asyncio + aiohttp in this process, C workers each posting a raw PNG body in a loop
  (cycling through `--files` scans) for `--duration` s after `--warmup` s, for each C. Reported:
  p50/p99 of the 200s, requests/s, errors by status, and the mean of each stage of the response's
  Server-Timing header (decode, regress, lookup: measured in the ingress, hops included), so the
  overhead splits into hops per stage and what lies outside the stages (proxy, ingress, HTTP).

    python benchmarks/bench_serve.py                       # C = 1, 8, 32; writes results/serve.json
    python benchmarks/bench_serve.py --baseline-only       # no Ray: the in-process figures
    python benchmarks/bench_serve.py --replicas 2 --ort-threads 1 --out benchmarks/results/serve-2x1.json
    python benchmarks/bench_serve.py --scan-size 256       # scans at the model's size: decoding ~free

Do not run it beside other heavy work: on a 2-core machine any other process moves the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
from common import (
    DEFAULT_WORK,
    FULL_SIZE,
    CpuSampler,
    archive_of,
    machine,
    ort_batched_throughput,
    ort_per_core_throughput,
    resnet50_bundle,
    scan_files,
    summary_ms,
    write_json,
)

log = logging.getLogger("bench_serve")
STAGES = ("decode", "regress", "lookup")  # the Server-Timing names of POST /v1/predict (also: chain, the total)
SERVED_STAGES = ("queue", *STAGES)  # queue: waiting for a scan worker (topology single); nothing in-process


# --- in-process baseline ----------------------------------------------------------------------


def in_process(bundle_path: Path, bodies: list[bytes], requests: int, batch_size: int, threads: int | None) -> dict:
    """The same work as a request, in this process: whole-chain latency, per-stage means, and
    batched ORT throughput on decoded scans."""
    from clare_dist.bundle import load_bundle
    from clare_dist.scans import ScanConfig
    from clare_dist.screening import Screener, decode, regress, screen_points

    bundle = load_bundle(bundle_path)
    screener = Screener(bundle, threads=threads)
    for body in bodies[:5]:  # warm-up: allocators, ORT's first runs, the index's caches
        screener.screen([body])
    latencies = []
    for i in range(requests):
        start = time.perf_counter()
        screener.screen([bodies[i % len(bodies)]])
        latencies.append(time.perf_counter() - start)

    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for i in range(requests):  # the same stages, timed one by one (Screener.screen runs exactly these)
        t0 = time.perf_counter()
        scan = decode(bodies[i % len(bodies)], ScanConfig(size=bundle.image_size))
        t1 = time.perf_counter()
        coords = regress(screener.session, scan[None], 1)
        t2 = time.perf_counter()
        screen_points(coords, ["scan"], bundle.references, screener.index, bundle.model_version)
        t3 = time.perf_counter()
        for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2)):
            stages[stage].append(seconds)

    batched = batched_ort(bundle.onnx_path, bundle.image_size, bodies, batch_size)
    decode_ms = float(np.mean(stages["decode"]) * 1e3)
    return {
        "requests": requests, "ort_threads": threads, "latency": summary_ms(latencies),
        "stage_mean_ms": {stage: float(np.mean(values) * 1e3) for stage, values in stages.items()},
        "ort_batched": batched,
        # One process decoding then running batched ORT: what the chain's CPUs could do at best.
        "decode_plus_batched_ort_img_s": 1e3 / (decode_ms + batched["ms_per_image"]),
    }


def batched_ort(onnx_path: Path, image_size: int, bodies: list[bytes], batch_size: int) -> dict:
    """ONNX Runtime alone on batches of decoded scans, the best the machine does: the saturation
    target's denominator, whatever the regressor's own settings. Both ways of filling the cores are
    measured, one session with a thread per core and one single-thread session per core; `img_s`
    is the better."""
    from clare_dist.runtime import open_session
    from clare_dist.scans import ScanConfig
    from clare_dist.screening import decode

    scans = np.stack([decode(bodies[i % len(bodies)], ScanConfig(size=image_size)) for i in range(batch_size)])
    one = ort_batched_throughput(open_session(onnx_path, threads=os.cpu_count()), scans, batch_size, repeats=4)
    per_core = ort_per_core_throughput(onnx_path, scans, batch_size, repeats=2)
    best = max(("one_session", one), ("per_core_sessions", per_core), key=lambda named: named[1]["img_s"])
    return {"img_s": best[1]["img_s"], "ms_per_image": best[1]["ms_per_image"], "batch_size": batch_size,
            "best": best[0], "one_session": one, "per_core_sessions": per_core}


def print_in_process(base: dict) -> None:
    lat, st, ort = base["latency"], base["stage_mean_ms"], base["ort_batched"]
    print(f"in-process, one scan a call: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, mean {lat['mean_ms']:.1f} ms "
          f"(decode {st['decode']:.1f} + regress {st['regress']:.1f} + lookup {st['lookup']:.2f} ms)")
    print(f"batched ORT, batches of {ort['batch_size']}: {ort['img_s']:.1f} img/s, the better of one session on every core "
          f"({ort['one_session']['img_s']:.1f}) and a single-thread session per core ({ort['per_core_sessions']['img_s']:.1f}); "
          f"decode + batched ORT in one process: {base['decode_plus_batched_ort_img_s']:.1f} img/s")


# --- the app ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(bundle: Path, args: argparse.Namespace) -> tuple[str, dict]:
    """Ray, Serve's proxy on loopback and the application, until GET /readyz answers 200."""
    from jobs.cluster import connect
    from serve.app import resolve_topology, run, serve_environment

    os.environ.pop("CLARE_API_TOKEN", None)  # no token: the benchmark measures the chain, not auth
    for name, value in serve_environment().items():  # as `clare-dist serve` starts a local Ray
        os.environ.setdefault(name, value)
    timings = {}
    started = time.perf_counter()
    connect(None, args.num_cpus)
    timings["connect_s"] = time.perf_counter() - started
    app_args = {"bundle": str(bundle), "topology": args.topology, "decode_threads": args.decode_threads, "max_body_mb": 64, "max_batch_size": args.max_batch_size,
                "batch_wait_ms": args.batch_wait_ms, "ort_threads": args.ort_threads,
                "ort_spinning": args.ort_spinning, "replicas": args.replicas}
    port = args.port or free_port()
    started = time.perf_counter()
    run(app_args, host="127.0.0.1", port=port, blocking=False)
    timings["deploy_s"] = time.perf_counter() - started
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, args.ready_timeout)
    timings["ready_s"] = time.perf_counter() - started
    return url, {"args": app_args, "topology": resolve_topology(args.topology), "startup": timings}


def wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=10) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as err:  # HTTPError (503 while stages start) included
            last = err
        time.sleep(1)
    raise SystemExit(f"the app at {url} was not ready after {timeout:.0f} s (last answer: {last})")


# --- C = 1, paired ------------------------------------------------------------------------------


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


# --- the load generator -----------------------------------------------------------------------


async def load_level(url: str, bodies: list[bytes], concurrency: int, duration: float, warmup: float,
                     timeout: float) -> dict:
    """C workers posting scans back to back: a warm-up, then `duration` s recorded."""
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
                except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                    status, timing = type(err).__name__, None
                if record:
                    records.append((time.perf_counter() - start, status, timing))

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


# --- the verdict ------------------------------------------------------------------------------


def verdict(base: dict, http: dict, batch_wait_ms: float) -> dict:
    """Overhead at C=1 (paired; and the load level's p50 over the baseline's, with where it goes)
    and the saturation fraction."""
    paired, levels = http["paired_c1"], http["levels"]
    result: dict = {"overhead_paired_p50_ms": paired["overhead_p50_ms"],
                    "overhead_target_met": bool(paired["overhead_p50_ms"] <= 10.0)}
    single = next((lvl for lvl in levels if lvl["concurrency"] == 1 and lvl["ok"]), None)
    if single:
        result["overhead_p50_ms"] = single["latency"]["p50_ms"] - base["latency"]["p50_ms"]
        result["overhead_mean_ms"] = single["latency"]["mean_ms"] - base["latency"]["mean_ms"]
        hops = {f"{stage}_slower_ms": single["server_timing_mean_ms"].get(stage, float("nan")) - base["stage_mean_ms"][stage]
                for stage in STAGES}
        result["overhead_split_ms"] = hops | {"queue_ms": single["server_timing_mean_ms"].get("queue", 0.0),
                                              "outside_stages_ms": single["outside_stages_mean_ms"],
                                              "of_which_batch_wait_ms": batch_wait_ms}
    loaded = [lvl for lvl in levels if lvl["ok"]]
    if loaded:
        top = max(loaded, key=lambda lvl: lvl["concurrency"])
        best = max(loaded, key=lambda lvl: lvl["req_s"])
        ort = (base["ort_batched"]["img_s"] + http["ort_batched_after"]["img_s"]) / 2
        # Where the cores went at saturation: the CPU each answer took, against what batched ORT
        # alone takes per image (the rest is decoding and the serving path).
        spent = sum(cpu_ms_per_request(top).values())
        ort_cpu = float(np.mean([m[m["best"]]["cpu_ms_per_image"] for m in (base["ort_batched"], http["ort_batched_after"])]))
        result |= {"cpu_ms_per_request": spent, "batched_ort_cpu_ms_per_image": ort_cpu,
                   "cpu_ms_beyond_batched_ort": spent - ort_cpu, "machine_busy": top["cpu"]["utilisation"]}
        result |= {
            "ort_batched_img_s": ort,
            "saturated_concurrency": top["concurrency"], "saturated_req_s": top["req_s"], "best_req_s": best["req_s"],
            "saturation_fraction": top["req_s"] / ort,
            "saturation_vs_decode_plus_ort": top["req_s"] / base["decode_plus_batched_ort_img_s"],
            "saturation_target_met": bool(top["req_s"] / ort >= 0.8),
        }
    return result


def print_verdict(v: dict, base: dict) -> None:
    print("\n== summary ==")
    print(f"overhead at C=1, paired: p50 {v['overhead_paired_p50_ms']:+.1f} ms (target <= 10 ms)")
    if "overhead_p50_ms" in v:
        split = v["overhead_split_ms"]
        print(f"overhead at C=1, load level vs baseline (minutes apart): p50 {v['overhead_p50_ms']:+.1f} ms "
              f"(mean {v['overhead_mean_ms']:+.1f} ms): "
              f"decode {split['decode_slower_ms']:+.1f}, regress {split['regress_slower_ms']:+.1f} "
              f"(incl. up to {split['of_which_batch_wait_ms']:g} ms batch wait), lookup {split['lookup_slower_ms']:+.1f} "
              f"slower than in-process; waiting for a scan worker {split['queue_ms']:.1f} ms; "
              f"outside the stages {split['outside_stages_ms']:.1f} ms")
    if "saturation_fraction" in v:
        print(f"saturated (C={v['saturated_concurrency']}): {v['saturated_req_s']:.2f} req/s = {v['saturation_fraction']:.2f}x "
              f"batched ORT's {v['ort_batched_img_s']:.1f} img/s (mean of before and after; target >= 0.8x); "
              f"{v['saturation_vs_decode_plus_ort']:.2f}x decode + batched ORT in one process "
              f"({base['decode_plus_batched_ort_img_s']:.1f} img/s: the chain must decode on the same cores)")
        print(f"at saturation each answer took {v['cpu_ms_per_request']:.1f} ms of core time ({v['machine_busy']:.0%} of the "
              f"machine busy); batched ORT alone takes {v['batched_ort_cpu_ms_per_image']:.1f} ms an image, so "
              f"{v['cpu_ms_beyond_batched_ort']:.1f} ms went to decoding ({base['stage_mean_ms']['decode']:.1f} ms in-process), "
              f"the serving path, Ray and ORT running below its batched efficiency")


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="bundle and scans (reused)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--index-cases", type=int, default=100_000, help="known cases in the bundle's index (0: none)")
    parser.add_argument("--files", type=int, default=20, help="distinct 1024x1024 PNGs the requests cycle through")
    parser.add_argument("--scan-size", type=int, default=FULL_SIZE,
                        help="side of the PNGs posted: 1024 (real CXR14 size) or smaller copies, made with LANCZOS and "
                             "kept under --work (at the model's size, decoding costs ~1 ms: what is left is the serving path)")
    parser.add_argument("--baseline-requests", type=int, default=50)
    parser.add_argument("--baseline-only", action="store_true", help="in-process figures only; no Ray")
    parser.add_argument("--paired-requests", type=int, default=72, help="scans a side of the paired C=1 measurement")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds recorded per concurrency")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of unrecorded load before each")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    app = parser.add_argument_group("the app (serve.app.AppArgs) and its Ray")
    app.add_argument("--topology", choices=("auto", "single", "ingress", "chain"), default="auto",
                     help="every stage in the ingress (no hop), all but the regressor (one), each its own deployment "
                          "(three); auto: ingress with a GPU, else single (serve/app.py)")
    app.add_argument("--decode-threads", type=int, default=None, help="decoding threads per ingress replica (topologies single, ingress)")
    app.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default all)")
    app.add_argument("--replicas", type=int, default=None, help="replicas of the working stages (serve.app.WORKING_STAGES)")
    app.add_argument("--max-batch-size", type=int, default=16)
    app.add_argument("--batch-wait-ms", type=float, default=0.0)
    app.add_argument("--ort-threads", type=int, default=None, help="ORT threads per regressor replica (and in-process)")
    app.add_argument("--ort-spinning", action="store_true", help="the regressor's idle ORT threads busy-wait")
    app.add_argument("--port", type=int, default=0, help="proxy port (default: a free one)")
    app.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve.json"))
    return parser.parse_args()


def run_load(bundle: Path, bodies: list[bytes], args: argparse.Namespace) -> dict:
    """Start the app, load it at each concurrency, shut everything down."""
    import ray
    from ray import serve

    from clare_dist.bundle import load_bundle

    try:
        url, app = start_app(bundle, args)
        print(f"\n== HTTP on {url} (connect {app['startup']['connect_s']:.1f} s, deploy {app['startup']['deploy_s']:.1f} s, "
              f"ready {app['startup']['ready_s']:.1f} s; cluster {ray.cluster_resources()}) ==")
        paired = paired_overhead(url, bundle, bodies, args.paired_requests, args.ort_threads, args.ort_spinning)
        print_paired(paired)
        levels = []
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            levels.append(asyncio.run(load_level(url, bodies, concurrency, args.duration, args.warmup, args.request_timeout)))
            log.info("C=%d: %.2f req/s, p50 %.1f ms", concurrency, levels[-1]["req_s"],
                     levels[-1]["latency"].get("p50_ms", float("nan")))
        print_levels(levels)
        # Measured again now: the denominator of the saturation fraction is the mean of before and after.
        loaded = load_bundle(bundle)
        ort_after = batched_ort(loaded.onnx_path, loaded.image_size, bodies, args.max_batch_size)
        print(f"batched ORT after the load levels: {ort_after['img_s']:.1f} img/s")
        return app | {"cluster": ray.cluster_resources(), "paired_c1": paired, "levels": levels, "ort_batched_after": ort_after}
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def resized_copies(files: list[Path], size: int, out_dir: Path) -> list[Path]:
    """8-bit grayscale PNG copies of `files` at size×size (LANCZOS), made once and reused."""
    from PIL import Image

    from clare_dist.scans import ScanConfig
    from clare_dist.screening import decode

    out_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for file in files:
        copy = out_dir / file.name
        if not copy.exists():  # written under another name first: an interrupted run leaves no half file
            partial = copy.with_suffix(".partial")
            Image.fromarray(decode(file, ScanConfig(size=size))).save(partial, format="PNG")
            partial.replace(copy)
        copies.append(copy)
    return copies


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("clare_dist", "jobs", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = resnet50_bundle(args.work, args.image_size, args.index_cases)
    files = scan_files(archive_of(args.files, args.work / f"archive-{args.files}", args.work / "pool-1024"))
    if args.scan_size != FULL_SIZE:
        files = resized_copies(files, args.scan_size, args.work / f"archive-{args.files}-{args.scan_size}")
    bodies = [f.read_bytes() for f in files]
    document: dict = {
        "benchmark": "serving chain: POST /v1/predict over loopback HTTP vs the same work in-process",
        "targets": "overhead <= 10 ms at concurrency 1; saturated req/s >= 0.8x batched ORT img/s (DESIGN.md 3)",
        "machine": machine(), "bundle": str(bundle), "image_size": args.image_size, "index_cases": args.index_cases,
        "scans": {"files": len(bodies), "size": f"{args.scan_size}x{args.scan_size} PNG", "mean_kib": float(np.mean([len(b) for b in bodies]) / 1024)},
        "load": {"concurrency": args.concurrency, "duration_s": args.duration, "warmup_s": args.warmup},
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    }

    print(f"== in-process: ResNet50 @{args.image_size}, {len(bodies)} scans of {args.scan_size}x{args.scan_size}, "
          f"{args.index_cases:,} indexed cases ==")
    base = in_process(bundle, bodies, args.baseline_requests, args.max_batch_size, args.ort_threads)
    document["in_process"] = base
    print_in_process(base)

    if not args.baseline_only:
        document["http"] = run_load(bundle, bodies, args)
        document["summary"] = verdict(base, document["http"], args.batch_wait_ms)
        print_verdict(document["summary"], base)
    out = write_json(document, args.out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
