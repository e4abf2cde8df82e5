"""The command line's `clare-dist serve`: its options, and the app arguments they become.

Kept apart from cli.py, as the PACS commands are in cli_pacs.py: the serving options are many
and are the application's (`serve.app.AppArgs`), not the method's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clare_dist.cli_options import SCAN_LIMITS, add_ray_options, add_scan_limits, scan_limits


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="the HTTP screening API on Ray Serve (POST /v1/predict, docs at /docs)")
    p.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000)
    scaling = p.add_mutually_exclusive_group()
    p.add_argument("--topology", choices=("auto", "single", "ingress", "chain"), default="auto",
                   help="single: each ingress replica runs every stage (no hop); ingress: all but the regressor "
                        "(one hop); chain: every stage a deployment (three hops); auto (default): ingress where "
                        "Ray has a GPU, else single")
    p.add_argument("--decode-threads", type=int, default=None,
                   help="scans each ingress replica decodes at once: its scan workers in topology single (default: "
                        "the node's CPUs; with --replicas N on one machine, its CPUs / N), its decoding threads in "
                        "ingress (default: the replica's CPUs; more on a GPU box)")
    p.add_argument("--ort-threads", type=int, default=None,
                   help="ONNX Runtime threads of a Regressor replica, or in topology single those a lone scan "
                        "runs on (default: the node's cores); 1 there saves the second session's memory "
                        "(~170 MB for ResNet50) at about twice a lone scan's regression time")
    scaling.add_argument("--replicas", type=int, default=None, help="fixed replicas of the decoding and regressor stages (serve.app.WORKING_STAGES)")
    scaling.add_argument("--autoscale", action="store_true", help="autoscale every stage as serve/config.yaml does")
    p.add_argument("--max-body-mb", type=float, default=64, help="largest accepted scan upload (413 beyond)")
    p.add_argument("--max-queue-wait-s", type=float, default=2.0,
                   help="queue-wait budget: a scan that cannot start within it is answered 503 at once, with "
                        "Retry-After (default 2: a 2 s burst is absorbed, answers stay within 2 s + a scan's work)")
    p.add_argument("--drain-s", type=float, default=10.0,
                   help="on SIGINT/SIGTERM, how long the requests already admitted get to finish (default 10)")
    p.add_argument("--images", type=Path, default=None, help="folder the indexed cases' relative paths are under")
    add_ray_options(p)
    add_scan_limits(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """The HTTP API on Ray Serve, until SIGINT (Ctrl-C) or SIGTERM, which stop all it started."""
    from clare_dist.bundle import load_bundle

    bundle = load_bundle(args.bundle)  # a wrong path fails here, in words, not in a replica's log
    from serve.app import resolve_topology
    from serve.lifecycle import serve_until_stopped

    app_args = {"bundle": str(bundle.path.resolve()), "topology": args.topology,
                "decode_threads": args.decode_threads, "ort_threads": args.ort_threads, "max_body_mb": args.max_body_mb, "replicas": args.replicas,
                **{name: getattr(scan_limits(args), name) for name in SCAN_LIMITS},
                "max_queue_wait_s": args.max_queue_wait_s, "drain_s": args.drain_s,
                "autoscale": args.autoscale, "images_root": str(args.images.resolve()) if args.images else None}
    print(f"serving model {bundle.model_version} on http://{args.host}:{args.port} (API docs at /docs), "
          f"topology {resolve_topology(args.topology)}, queue-wait budget {args.max_queue_wait_s:g} s")
    serve_until_stopped(app_args, args.host, args.port, args.address, args.num_cpus)
    return 0
