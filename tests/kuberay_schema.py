"""Offline checks of KubeRay manifests: the upstream CRD schemas, then the operator's own rules.

The API server checks a custom resource against its CRD's openAPIV3Schema, and silently drops
fields it does not know. The KubeRay operator then applies more rules in Go
(ray-operator/controllers/ray/utils/validation.go) and reports a violation only as an event on
the object, with no cluster created. Both are repeated here, so that a mistake fails a test
instead of a deployment. See ../shared/kuberay-crds/README.md for the CRDs and why the schema
needs the adjustments made in `adjust_schema`.

Every check returns a list of problems, each naming where it is (empty: nothing found).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator

CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
RAY_API_VERSION = "ray.io/v1"

# validation.go: MaxRayClusterNameLength, MaxRayJobNameLength, MaxRayServiceNameLength.
MAX_NAME_LENGTH = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
UPGRADE_TYPES = ("NewClusterWithIncrementalUpgrade", "NewCluster", "None")
# rayStartParams that set resources; the operator refuses them next to a group's `resources`.
RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")
MIN_RAY_FOR_TOKEN_AUTH = (2, 52, 0)
# CRD defaults the operator relies on (minReplicas 0, maxReplicas int32 max).
DEFAULT_MIN_REPLICAS, DEFAULT_MAX_REPLICAS = 0, 2147483647

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are ~1 MB each


def load_documents(path: Path) -> list[dict]:
    """The YAML documents of a manifest file, empty ones left out."""
    return [doc for doc in yaml.load_all(path.read_text(), Loader=Loader) if doc is not None]


# ---- the CRD schema ---------------------------------------------------------------------------


def adjust_schema(node: Any) -> Any:
    """A copy of an openAPIV3Schema that Draft 7 checks the way the API server does.

    1. A property with a `default` is not required: the server fills it in before checking.
    2. `x-kubernetes-int-or-string` accepts an integer or a string.
    3. Strict mode: an object with `properties` and no `x-kubernetes-preserve-unknown-fields`
       gets `additionalProperties: false`, so a typo'd field is an error rather than dropped.
    (The fourth adjustment, nulls as absent, is made on the manifest: `without_nulls`.)
    """
    if isinstance(node, list):
        return [adjust_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: adjust_schema(prop) for name, prop in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            out[key] = adjust_schema(value)
        else:
            out[key] = copy.deepcopy(value)
    if "required" in out and "properties" in out:
        out["required"] = [name for name in out["required"] if "default" not in out["properties"].get(name, {})]
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_schema(crd_file: Path, version: str = "v1") -> dict:
    """The adjusted openAPIV3Schema of one served version of a CRD file."""
    crd = yaml.load(crd_file.read_text(), Loader=Loader)
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return adjust_schema(entry["schema"]["openAPIV3Schema"])


@cache
def validator(crd_dir: Path, kind: str) -> Draft7Validator:
    """One validator per CRD for the whole session (loading and adjusting takes ~1 s each)."""
    return Draft7Validator(crd_schema(crd_dir / CRD_FILES[kind]))


def without_nulls(value: Any) -> Any:
    """The manifest as the API server stores it: a null field (`metadata:` left empty) is absent."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def schema_problems(doc: dict, crd_dir: Path) -> list[str]:
    """Where a ray.io/v1 object breaks its CRD's schema (unknown fields included)."""
    kind = doc.get("kind")
    if kind not in CRD_FILES:
        return [f"kind {kind!r} is not one of the KubeRay kinds {sorted(CRD_FILES)}"]
    if doc.get("apiVersion") != RAY_API_VERSION:
        return [f"apiVersion {doc.get('apiVersion')!r}: write {RAY_API_VERSION}, the served storage version"]
    errors = validator(crd_dir, kind).iter_errors(without_nulls(doc))
    return sorted(f"{_path(e.absolute_path) or '(top)'}: {e.message}" for e in errors)


def _path(parts) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


# ---- the operator's rules (validation.go) -----------------------------------------------------


def operator_problems(doc: dict) -> list[str]:
    """The checks KubeRay makes before it creates anything, for one RayCluster/RayJob/RayService."""
    problems = name_problems(doc)
    for where, spec in cluster_specs(doc):
        problems += cluster_spec_problems(where, spec)
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayJob":
        problems += rayjob_problems(spec)
    if doc.get("kind") == "RayService":
        problems += rayservice_problems(spec)
    return problems


def name_problems(doc: dict) -> list[str]:
    """Names become Service and Pod names: DNS-1035 labels, short enough for the suffixes added."""
    kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name", "")
    problems = []
    if not DNS1035_LABEL.match(name):
        problems.append(f"metadata.name {name!r} is not a DNS-1035 label (a-z, 0-9, '-', starting with a letter)")
    if kind in MAX_NAME_LENGTH and len(name) > MAX_NAME_LENGTH[kind]:
        problems.append(f"metadata.name {name!r} is {len(name)} characters; a {kind} name may have {MAX_NAME_LENGTH[kind]}")
    return problems


def cluster_specs(doc: dict) -> list[tuple[str, dict]]:
    """The RayCluster specs inside an object, with where they are."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "RayCluster":
        return [("spec", spec)]
    field = {"RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}.get(kind)
    if field and spec.get(field) is not None:
        return [(f"spec.{field}", spec[field])]
    return []


def ray_groups(where: str, spec: dict) -> Iterator[tuple[str, dict]]:
    """The head group and every worker group, with where they are."""
    yield f"{where}.headGroupSpec", spec.get("headGroupSpec") or {}
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        yield f"{where}.workerGroupSpecs[{i}]", group


def cluster_spec_problems(where: str, spec: dict) -> list[str]:
    """ValidateRayClusterSpec: containers, rayStartParams, replica bounds, autoscaler, auth."""
    problems = []
    for at, group in ray_groups(where, spec):
        problems += group_problems(at, group)
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        problems += replica_problems(f"{where}.workerGroupSpecs[{i}]", group)
    problems += autoscaler_problems(where, spec)
    problems += auth_problems(where, spec)
    return problems


def group_problems(at: str, group: dict) -> list[str]:
    """One group: a container to run Ray in, string rayStartParams, resources set in one place."""
    problems = []
    if not ((group.get("template") or {}).get("spec") or {}).get("containers"):
        problems.append(f"{at}: needs at least one container (the first one runs Ray)")
    params = group.get("rayStartParams") or {}
    for key, value in params.items():
        if not isinstance(value, str):
            problems.append(f"{at}.rayStartParams.{key}: {value!r} must be a string (write {str(value)!r} quoted)")
    if any(params.get(key) for key in RESOURCE_PARAMS) and group.get("resources"):
        problems.append(f"{at}: resources are set both in rayStartParams and in `resources`; use one")
    if "labels" in params:
        problems.append(f"{at}.rayStartParams.labels is not supported; use the group's `labels` field")
    return problems


def replica_problems(at: str, group: dict) -> list[str]:
    """minReplicas <= maxReplicas; replicas outside them would be clamped without a word."""
    low = group.get("minReplicas", DEFAULT_MIN_REPLICAS)
    high = group.get("maxReplicas", DEFAULT_MAX_REPLICAS)
    problems = []
    if low > high:
        problems.append(f"{at}: minReplicas {low} > maxReplicas {high}")
    elif group.get("replicas") is not None and not low <= group["replicas"] <= high:
        problems.append(f"{at}: replicas {group['replicas']} is outside minReplicas..maxReplicas ({low}..{high})")
    return problems


def autoscaler_problems(where: str, spec: dict) -> list[str]:
    """Autoscaler v2 replaces failed Pods itself: restartPolicy must be Never or unset."""
    options = spec.get("autoscalerOptions") or {}
    if not spec.get("enableInTreeAutoscaling") or options.get("version") != "v2":
        return []
    return [
        f"{at}: restartPolicy must be Never or unset with autoscaler v2"
        for at, group in ray_groups(where, spec)
        if ((group.get("template") or {}).get("spec") or {}).get("restartPolicy") not in (None, "", "Never")
    ]


def auth_problems(where: str, spec: dict) -> list[str]:
    """Token authentication needs Ray >= 2.52.0, and KubeRay reads the version from rayVersion."""
    if (spec.get("authOptions") or {}).get("mode") != "token":
        return []
    version = version_tuple(spec.get("rayVersion", ""))
    if version is None or version < MIN_RAY_FOR_TOKEN_AUTH:
        return [f"{where}.authOptions: token mode needs rayVersion >= 2.52.0, got {spec.get('rayVersion')!r}"]
    return []


def version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", str(text))
    return tuple(int(part) for part in match.groups()) if match else None


def rayjob_problems(spec: dict) -> list[str]:
    """ValidateRayJobSpec: a cluster to run on, the submission mode, deadlines and clean-up."""
    problems = []
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        problems.append(f"spec.submissionMode {mode!r} is not one of {SUBMISSION_MODES}")
    if spec.get("rayClusterSpec") is None and not spec.get("clusterSelector"):
        problems.append("spec: a RayJob needs rayClusterSpec or clusterSelector")
    shutdown = spec.get("shutdownAfterJobFinishes", False)
    if not shutdown and spec.get("ttlSecondsAfterFinished", 0) > 0:
        problems.append("spec.ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    if not shutdown and spec.get("suspend"):
        problems.append("spec.suspend needs shutdownAfterJobFinishes: true")
    if spec.get("ttlSecondsAfterFinished", 0) < 0:
        problems.append("spec.ttlSecondsAfterFinished must not be negative")
    for field in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if field in spec and spec[field] <= 0:
            problems.append(f"spec.{field} must be greater than 0")
    if spec.get("backoffLimit", 0) < 0:
        problems.append("spec.backoffLimit must not be negative")
    if mode == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        problems.append("spec.backoffLimit is not allowed with InteractiveMode")
    if ((spec.get("deletionStrategy") or {}).get("deletionRules")) and shutdown:
        problems.append("spec.deletionStrategy.deletionRules cannot be combined with shutdownAfterJobFinishes")
    if mode == "SidecarMode":
        problems += sidecar_problems(spec)
    try:
        yaml.safe_load(spec.get("runtimeEnvYAML") or "")
    except yaml.YAMLError as exc:
        problems.append(f"spec.runtimeEnvYAML is not YAML: {exc}")
    return problems


def sidecar_problems(spec: dict) -> list[str]:
    problems = [f"spec.{field} is not supported in SidecarMode" for field in ("submitterPodTemplate", "submitterConfig") if spec.get(field)]
    head_group = (spec.get("rayClusterSpec") or {}).get("headGroupSpec") or {}
    head = (head_group.get("template") or {}).get("spec") or {}
    if head.get("restartPolicy") not in (None, "", "Never"):
        problems.append("spec.rayClusterSpec.headGroupSpec: restartPolicy must be Never or unset in SidecarMode")
    return problems


def rayservice_problems(spec: dict) -> list[str]:
    """ValidateRayServiceSpec: the upgrade strategy and its options, the Serve config's YAML."""
    problems = []
    strategy = spec.get("upgradeStrategy") or {}
    kind = strategy.get("type")
    if kind is not None and kind not in UPGRADE_TYPES:
        problems.append(f"spec.upgradeStrategy.type {kind!r} is not one of {UPGRADE_TYPES}")
    if kind == "NewClusterWithIncrementalUpgrade":
        problems += incremental_upgrade_problems(spec)
    if spec.get("rayClusterDeletionDelaySeconds", 0) < 0:
        problems.append("spec.rayClusterDeletionDelaySeconds must not be negative")
    head_service = ((spec.get("rayClusterConfig") or {}).get("headGroupSpec") or {}).get("headService") or {}
    if (head_service.get("metadata") or {}).get("name"):
        problems.append("spec.rayClusterConfig.headGroupSpec.headService.metadata.name must not be set for a RayService")
    try:
        yaml.safe_load(spec.get("serveConfigV2") or "")
    except yaml.YAMLError as exc:
        problems.append(f"spec.serveConfigV2 is not YAML: {exc}")
    return problems


def incremental_upgrade_problems(spec: dict) -> list[str]:
    """NewClusterWithIncrementalUpgrade needs the autoscaler and complete clusterUpgradeOptions."""
    problems = []
    if not (spec.get("rayClusterConfig") or {}).get("enableInTreeAutoscaling"):
        problems.append("spec.upgradeStrategy: NewClusterWithIncrementalUpgrade needs enableInTreeAutoscaling: true")
    options = (spec.get("upgradeStrategy") or {}).get("clusterUpgradeOptions")
    if not options:
        return problems + ["spec.upgradeStrategy.clusterUpgradeOptions is required for NewClusterWithIncrementalUpgrade"]
    for field in ("maxSurgePercent", "stepSizePercent"):
        value = options.get(field, 100 if field == "maxSurgePercent" else None)
        if value is None or not 0 <= value <= 100:
            problems.append(f"spec.upgradeStrategy.clusterUpgradeOptions.{field} must be between 0 and 100")
    if options.get("intervalSeconds", 0) <= 0:
        problems.append("spec.upgradeStrategy.clusterUpgradeOptions.intervalSeconds must be greater than 0")
    if not options.get("gatewayClassName"):
        problems.append("spec.upgradeStrategy.clusterUpgradeOptions.gatewayClassName is required")
    return problems
