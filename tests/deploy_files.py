"""The deployment's files as the deployment tests read them (tests/test_deploy_*.py): the KubeRay
manifests and their objects, the parts of an object the checks look at, pyproject.toml.

Each object comes from the files as they are; `the` hands a test a deep copy to break.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import kuberay_schema as kr
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY_DIR = REPO / "deploy" / "kuberay"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SERVE_CONFIG = REPO / "serve" / "config.yaml"
NON_ROOT_UID = 1000


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERAY_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def all_objects() -> list[tuple[str, dict]]:
    """(file name, object) for every Kubernetes object under deploy/kuberay."""
    return [(path.name, doc) for path in manifest_files() for doc in kr.load_documents(path)]


def ray_objects() -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in all_objects() if doc.get("apiVersion", "").startswith("ray.io/")]


def the(kind: str, name: str) -> dict:
    """A deep copy of one of the real objects, for the tests to change."""
    (doc,) = [d for _, d in all_objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    return copy.deepcopy(doc)


def object_id(item: tuple[str, dict]) -> str:
    name, doc = item
    return f"{name}:{doc['kind']}/{doc['metadata']['name']}"


def object_name(doc: dict) -> str:
    """An object's metadata.name: the id of a test run once per job or service."""
    return doc["metadata"]["name"]


def jobs() -> list[dict]:
    return [doc for _, doc in ray_objects() if doc["kind"] == "RayJob"]


def services() -> list[dict]:
    return [doc for _, doc in ray_objects() if doc["kind"] == "RayService"]


def groups(doc: dict) -> Iterator[tuple[str, dict]]:
    """Every Ray group (head and workers) of every cluster spec in an object."""
    for where, spec in kr.cluster_specs(doc):
        yield from kr.ray_groups(where, spec)


def ray_container(group: dict) -> dict:
    """KubeRay runs Ray in a group's first container."""
    return group["template"]["spec"]["containers"][0]


def kustomization() -> dict:
    return yaml.safe_load((KUBERAY_DIR / "kustomization.yaml").read_text())


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())
