"""How many cores a replica works with: Ray's count of its node's CPUs, or of its own share.

One rule for every deployment. In a Pod, KubeRay sets a node's CPUs from the container's limit,
where os.cpu_count() would say the host's; and Ray sets OMP_NUM_THREADS to a replica's CPU share,
which ONNX Runtime would honour, so a CPU regressor given no explicit count would run on one thread.
"""

import os

import ray


def node_cpus() -> int:
    """CPUs of the Ray node this replica runs on: the cores a replica that regresses on the CPU has."""
    here = ray.get_runtime_context().get_node_id()
    cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node["NodeID"] == here]
    return max(1, int(cpus[0])) if cpus else os.cpu_count() or 1


def replica_cpus() -> int:
    """Whole CPUs Ray gave this replica (at least one): how many scans it decodes at a time."""
    return max(1, round(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
