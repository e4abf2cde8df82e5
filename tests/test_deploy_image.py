"""The container image (deploy/Dockerfile) and the Ray version, checked offline: one Ray version in
pyproject.toml, the installed Ray, the Dockerfile's base images, every rayVersion and image tag;
the Dockerfile installs pyproject's torch, runs as the non-root user and copies every package.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from deploy_files import DOCKERFILE, DOCKERIGNORE, NON_ROOT_UID, all_objects, pyproject, ray_container


# ---- versions -------------------------------------------------------------------------------


def walk(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair anywhere in a document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def pinned_ray_version() -> str:
    (pin,) = [d for d in pyproject()["project"]["dependencies"] if re.match(r"ray(\[.*\])?==", d)]
    return pin.split("==")[1]


def dockerfile_args(text: str) -> dict[str, str]:
    """The Dockerfile's ARG defaults."""
    return dict(re.findall(r"^ARG\s+(\w+)=(\S*)", text, flags=re.MULTILINE))


def dockerfile_base_images(text: str) -> list[str]:
    """The FROM images that are not earlier stages, with ARG defaults filled in."""
    args = dockerfile_args(text)
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
              for image in re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)]
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.MULTILINE | re.IGNORECASE))
    return [image for image in images if image not in stages]


def image_ray_version(image: str) -> str | None:
    """The Ray version an image tag states: rayproject/ray:<version>-..., or ours: ...-ray<version>-..."""
    name, _, tag = image.rpartition(":")
    if name.endswith("rayproject/ray"):
        return tag.split("-")[0]
    match = re.search(r"(?:^|-)ray(\d+\.\d+\.\d+)(?:-|$)", tag)
    return match.group(1) if match else None


def version_problems(expected: str, objects: list[tuple[str, dict]], dockerfile: str) -> list[str]:
    """Everywhere a Ray version is stated, it is `expected` (pyproject's pin)."""
    problems = []
    for image in dockerfile_base_images(dockerfile):
        if image_ray_version(image) != expected:
            problems.append(f"deploy/Dockerfile: FROM {image} is not Ray {expected}")
    for file, doc in objects:
        for key, value in walk(doc):
            if key == "rayVersion" and str(value) != expected:
                problems.append(f"{file}: rayVersion {value} is not {expected}")
            if key == "image" and isinstance(value, str) and image_ray_version(value) != expected:
                problems.append(f"{file}: image {value} does not carry Ray {expected} in its tag")
    return problems


# ---- the tests ------------------------------------------------------------------------------


def test_one_ray_version_everywhere():
    import ray

    expected = pinned_ray_version()
    assert ray.__version__ == expected, "the Ray installed here is not pyproject's pin"
    assert dockerfile_args(DOCKERFILE.read_text())["RAY_VERSION"] == expected
    assert len(dockerfile_base_images(DOCKERFILE.read_text())) == 2  # the CPU and GPU bases
    assert version_problems(expected, all_objects(), DOCKERFILE.read_text()) == []


def test_dockerfile_installs_pyprojects_torch():
    """The image installs torch before clare-dist (from PyTorch's CPU or CUDA index)."""
    wanted = {re.split(r"[<>=!~]", d)[0]: d for d in pyproject()["project"]["dependencies"]}
    installed = re.findall(r'"((?:torch|torchvision)[<>=!~][^"]*)"', DOCKERFILE.read_text())
    assert sorted(installed) == sorted([wanted["torch"], wanted["torchvision"]])


def test_image_runs_as_non_root_and_gets_every_package():
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] in {str(NON_ROOT_UID), "ray"}
    assert not [u for u in users if u.split(":")[0] in {"root", "0"}]
    kept = {line[1:].strip() for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    for package in (p.rstrip("*") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]):
        assert package in kept, f".dockerignore leaves {package} out of the build context"
        assert re.search(rf"^COPY .*\b{package}\b", text, flags=re.MULTILINE), f"the Dockerfile does not copy {package}"
    assert {"pyproject.toml", pyproject()["project"]["readme"]} <= kept


def test_version_check_catches_a_mismatch():
    objects = all_objects()
    job = next(doc for _, doc in objects if doc["kind"] == "RayJob")
    job["spec"]["rayClusterSpec"]["rayVersion"] = "2.59.0"
    ray_container(job["spec"]["rayClusterSpec"]["headGroupSpec"])["image"] = "rayproject/ray:2.59.0-py311"
    dockerfile = DOCKERFILE.read_text().replace("ARG RAY_VERSION=2.60.0", "ARG RAY_VERSION=2.61.0")
    problems = version_problems("2.60.0", objects, dockerfile)
    assert any("rayVersion 2.59.0" in p for p in problems)
    assert any("rayproject/ray:2.59.0-py311" in p for p in problems)
    assert any("FROM rayproject/ray:2.61.0-py311" in p for p in problems)
    assert image_ray_version("registry.example.com/clare-dist:latest") is None
