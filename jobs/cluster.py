"""Joining a Ray cluster, or starting a local one, the same way for every job."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)

# A worker that imports torch on a busy node can take over Ray Train's default 60 s to start.
WORKER_START_TIMEOUT_S = "600"


def connect(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS); otherwise start a local Ray instance."""
    if ray.is_initialized():
        log.info("using the Ray instance this process is already connected to")
        return
    runtime_env = {"env_vars": {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": WORKER_START_TIMEOUT_S}}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], runtime_env=runtime_env)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env)
    log.info("Ray cluster resources: %s", ray.cluster_resources())
