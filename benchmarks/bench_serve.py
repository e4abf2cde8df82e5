"""Benchmark of the serving chain: POST /v1/predict over real HTTP against the same work in-process.

DESIGN.md §3: the whole chain adds ≤ 10 ms over the same decode + inference done in one process
(at concurrency 1), and with dynamic batching its saturated throughput is ≥ 0.9× batched ONNX
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
  (cycling through `--files` scans) for `--duration` s after `--warmup` s, for each C; a worker
  answered 503 waits its Retry-After, as the API asks of clients (`--ignore-retry-after`: posts
  again at once, and the refusals' own CPU is part of the figure). Reported:
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
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from common import DEFAULT_WORK, FULL_SIZE, archive_of, machine, scan_files, start_work, write_json
from serve_baseline import batched_ort, in_process, print_in_process
from serve_load import load_level, paired_overhead, print_levels, print_paired
from serve_verdict import print_verdict, verdict

log = logging.getLogger("bench_serve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(bundle: Path, args: argparse.Namespace, overrides: dict | None = None) -> tuple[str, dict]:
    """Ray, Serve's proxy on loopback and the application (`add_app_arguments`' settings, then
    `overrides`: other AppArgs fields), until GET /readyz answers 200."""
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
                "ort_spinning": args.ort_spinning, "replicas": args.replicas} | (overrides or {})
    port = args.port or free_port()
    started = time.perf_counter()
    run(app_args, host="127.0.0.1", port=port)
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_work_arguments(parser)
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
    parser.add_argument("--ignore-retry-after", action="store_true",
                        help="a worker answered 503 posts again at once instead of waiting its Retry-After")
    add_app_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve.json"))
    return parser.parse_args()


def add_work_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the bundle and the scans are (common.start_work, common.archive_of)."""
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="bundle and scans (reused)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--index-cases", type=int, default=100_000, help="known cases in the bundle's index (0: none)")
    parser.add_argument("--files", type=int, default=20, help="distinct 1024x1024 PNGs the requests cycle through")


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """The app's settings (serve.app.AppArgs) and its Ray's, as `start_app` reads them."""
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
            levels.append(asyncio.run(load_level(url, bodies, concurrency, args.duration, args.warmup, args.request_timeout,
                                                   not args.ignore_retry_after)))
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
    bundle = start_work(args.work, args.image_size, args.index_cases)
    files = scan_files(archive_of(args.files, args.work / f"archive-{args.files}", args.work / "pool-1024"))
    if args.scan_size != FULL_SIZE:
        files = resized_copies(files, args.scan_size, args.work / f"archive-{args.files}-{args.scan_size}")
    bodies = [f.read_bytes() for f in files]
    document: dict = {
        "benchmark": "serving chain: POST /v1/predict over loopback HTTP vs the same work in-process",
        "targets": "overhead <= 10 ms at concurrency 1; saturated req/s >= 0.9x batched ORT img/s (DESIGN.md 3)",
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
