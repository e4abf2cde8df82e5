"""The Kubernetes deployment (deploy/), checked offline: no Ray, no Kubernetes cluster.

What a cluster would only say at deploy time is checked here: the manifests against KubeRay's
upstream CRDs and the operator's own rules (tests/kuberay_schema.py), the Serve config against
Ray's schema and serve/config.yaml, the RayJob entrypoints against clare-dist's own argument
parser and the volumes their paths are on, and one Ray version everywhere. Each checker returns
the problems it finds; the tests at the end feed the checkers broken copies of the real
manifests, to show each check catches what it is for.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import importlib
import importlib.util
import io
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kuberay_schema as kr
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY_DIR = REPO / "deploy" / "kuberay"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SERVE_CONFIG = REPO / "serve" / "config.yaml"
CRD_DIR = Path(__file__).resolve().parents[2] / "shared" / "kuberay-crds"

# In deploy/kuberay but deliberately not in kustomization.yaml: `kubectl apply -k` must never
# start GPU work, and the others need CRDs or a real secret that the cluster may not have.
NOT_IN_KUSTOMIZATION = {
    "rayjob-train.yaml", "rayjob-embed.yaml", "job-publish-bundle.yaml", "podmonitor.yaml", "secret-api-token.example.yaml",
}
# Besides clare-dist, what an entrypoint may run (shell built-ins that guard the steps).
SHELL_WORDS = {"set", "test", "["}
# Subcommands that join a Ray cluster: in a RayJob they must say so (--address), or a missing
# RAY_ADDRESS would quietly start a second, local Ray inside the head Pod.
RAY_COMMANDS = {"train", "embed", "demo", "serve"}
TOKEN_ENV = "CLARE_API_TOKEN"
GPU = "nvidia.com/gpu"
NON_ROOT_UID = 1000


# ---- the manifests ----------------------------------------------------------------------------


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


def pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """Every Pod template's spec in an object: Ray groups, or a batch Job's template."""
    for at, group in groups(doc):
        yield at, group["template"]["spec"]
    if doc.get("kind") == "Job":
        yield "spec.template", doc["spec"]["template"]["spec"]


def walk(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair anywhere in a document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


@pytest.fixture(scope="session")
def crd_dir() -> Path:
    if not CRD_DIR.is_dir():
        pytest.skip(f"needs the upstream KubeRay CRDs in {CRD_DIR}, which is absent on this checkout")
    return CRD_DIR


# ---- the Serve application --------------------------------------------------------------------


def serve_config_problems(service: dict) -> list[str]:
    """serveConfigV2 is serve/config.yaml, Ray's own schema accepts it, and it has no field that
    schema does not know (Ray ignores those: a misspelled setting would be dropped quietly)."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(service["spec"].get("serveConfigV2") or "")
    problems = []
    if config != yaml.safe_load(SERVE_CONFIG.read_text()):
        problems.append("spec.serveConfigV2 differs from serve/config.yaml; copy the file into it verbatim")
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        problems.append(f"spec.serveConfigV2 is not a valid Serve config: {exc}")
    return problems + unknown_fields(ServeDeploySchema, config, "spec.serveConfigV2")


def unknown_fields(model: type, value: Any, where: str) -> list[str]:
    """Keys of `value` that the pydantic `model` (and the models of its fields) does not have."""
    from pydantic import BaseModel

    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in unknown_fields(model, item, f"{where}[{i}]")]
    if not isinstance(value, dict):
        return []
    fields = {name: f for name, f in model.model_fields.items()} | {f.alias: f for f in model.model_fields.values() if f.alias}
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{where}.{key}: {model.__name__} has no such field")
            continue
        nested = [m for m in _types_in(fields[key].annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(nested) == 1:
            problems += unknown_fields(nested[0], item, f"{where}.{key}")
    return problems


def _types_in(annotation: Any) -> list[Any]:
    import typing

    args = typing.get_args(annotation)
    return [t for arg in args for t in _types_in(arg)] if args else [annotation]


def serve_app_problems(service: dict) -> list[str]:
    """Each application's import path resolves to a builder that accepts the config's args and
    builds every deployment the config configures (Serve refuses a config for a deployment the
    application does not have, at deploy time)."""
    problems = []
    for app in serve_applications(service):
        module_name, _, attribute = app["import_path"].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            problems.append(f"application {app['name']!r}: cannot import {module_name}: {exc}")
            continue
        builder = getattr(module, attribute, None)
        if not callable(builder):
            problems.append(f"application {app['name']!r}: {app['import_path']} is not a callable application builder")
            continue
        args_model = getattr(module, "AppArgs", None)
        if args_model is not None:
            problems += unknown_fields(args_model, app.get("args") or {}, f"application {app['name']!r} args")
        try:
            built = deployment_names(builder(app.get("args") or {}))
        except Exception as exc:  # noqa: BLE001 - any failure is what Serve would report when it deploys
            problems.append(f"application {app['name']!r}: {app['import_path']} fails with the config's args: {exc}")
            continue
        for deployment in app.get("deployments") or []:
            if deployment["name"] not in built:
                problems.append(f"application {app['name']!r}: configures {deployment['name']!r}, "
                                f"which it does not have ({sorted(built)})")
    return problems


def deployment_names(application: Any) -> set[str]:
    """The deployments of a built Serve application (Ray keeps the bound graph in
    `_bound_deployment`; the other deployments are Applications among its init args)."""
    from ray.serve import Application

    deployment = application._bound_deployment
    names = {deployment.name}
    for arg in list(deployment.init_args) + list(deployment.init_kwargs.values()):
        if isinstance(arg, Application):
            names |= deployment_names(arg)
    return names


def serve_applications(service: dict) -> list[dict]:
    return yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]


def bundle_mount_problems(service: dict) -> list[str]:
    """Every Ray container mounts one and the same bundle, read-only, where the app reads it.

    Replicas land on any Pod and the controller builds the app on the head, so a Pod without the
    mount, or with another bundle's subPath, serves a different model or none.
    """
    problems = []
    for app in serve_applications(service):
        path = app.get("args", {}).get("bundle")
        seen = set()
        for at, group in groups(service):
            container, volumes = ray_container(group), group["template"]["spec"].get("volumes") or []
            mount = next((m for m in container.get("volumeMounts") or [] if m["mountPath"] == path), None)
            if mount is None:
                problems.append(f"{at}: nothing is mounted at {path}, the bundle of application {app['name']!r}")
                continue
            if not mount.get("readOnly"):
                problems.append(f"{at}: the bundle mount at {path} must be readOnly")
            volume = next((v for v in volumes if v["name"] == mount["name"]), {})
            seen.add(((volume.get("persistentVolumeClaim") or {}).get("claimName"), mount.get("subPath")))
        if len(seen) > 1:
            problems.append(f"the Pods mount different bundles at {path}: {sorted(seen, key=str)}")
    return problems


def token_env_problems(service: dict) -> list[str]:
    """The API token reaches every Ray container, from a Secret, never written in the manifest."""
    problems = []
    for at, group in groups(service):
        env = {e["name"]: e for e in ray_container(group).get("env") or []}
        if TOKEN_ENV not in env:
            problems.append(f"{at}: {TOKEN_ENV} is not set (the ingress replica may run on this Pod)")
        elif "secretKeyRef" not in (env[TOKEN_ENV].get("valueFrom") or {}):
            problems.append(f"{at}: {TOKEN_ENV} must come from a Secret (valueFrom.secretKeyRef), not a value")
    return problems


def probe_problems(service: dict) -> list[str]:
    """KubeRay's default worker readiness probe checks Serve's proxy; a custom one must too."""
    problems = []
    for at, group in groups(service):
        probe = ray_container(group).get("readinessProbe")
        if probe is not None and "/-/healthz" not in yaml.safe_dump(probe):
            problems.append(f"{at}: a custom readinessProbe replaces KubeRay's and must still check /-/healthz")
    return problems


# ---- versions ---------------------------------------------------------------------------------


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


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


# ---- RayJob entrypoints -----------------------------------------------------------------------


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script, split at ;, &&, ||, | and newlines (quotes kept)."""
    lexer = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars=";&|\n")
    lexer.whitespace, lexer.whitespace_split = " \t\r", True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|\n"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [command for command in commands + [current] if command]


def inner_script(command: list[str]) -> str | None:
    """The script of a `bash -c '...'` (or `sh -c`) command."""
    if len(command) == 3 and command[0] in ("bash", "sh") and command[1] in ("-c", "-ec", "-ce"):
        return command[2]
    return None


def entrypoint_commands(entrypoint: str) -> list[list[str]]:
    """The commands a RayJob entrypoint runs on the cluster (inside its `bash -c`, if any)."""
    outer = shell_commands(entrypoint)
    script = inner_script(outer[0]) if len(outer) == 1 else None
    return shell_commands(script) if script is not None else outer


def strict_cli_parser() -> argparse.ArgumentParser:
    """clare-dist's own parser, refusing abbreviated flags: a manifest spells flags in full, so
    a flag added later cannot make an abbreviation ambiguous."""
    from clare_dist.cli import build_parser

    parser = build_parser()
    parsers = [parser] + [p for action in parser._subparsers._group_actions for p in action.choices.values()]
    for p in parsers:
        p.allow_abbrev = False
    return parser


def parse_clare_dist(args: list[str]) -> tuple[argparse.Namespace | None, str | None]:
    """(namespace, None) when clare-dist accepts `args`; (None, argparse's message) when not."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            return strict_cli_parser().parse_args(args), None
    except SystemExit as exc:
        reason = stderr.getvalue().strip().splitlines()[-1:] or ["prints help and exits"]
        return None, f"exit {exc.code}: {reason[0]}"


def clare_dist_args(argv: list[str]) -> list[str] | None:
    """The arguments of a clare-dist command (`clare-dist ...` or `python -m clare_dist ...`)."""
    if argv[0] == "clare-dist":
        return argv[1:]
    if argv[0] in ("python", "python3") and argv[1:3] == ["-m", "clare_dist"]:
        return argv[3:]
    return None


def command_problems(argv: list[str]) -> list[str]:
    """One command of an entrypoint: a clare-dist command our parser accepts, or a shell guard."""
    args = clare_dist_args(argv)
    if args is None:
        if argv[0] in ("python", "python3") and argv[1:2] == ["-m"] and len(argv) > 2:
            return [] if importlib.util.find_spec(argv[2]) else [f"{shlex.join(argv)}: no module {argv[2]}"]
        return [] if argv[0] in SHELL_WORDS else [f"{shlex.join(argv)}: {argv[0]!r} is not a command the image has"]
    namespace, error = parse_clare_dist(args)
    if namespace is None:
        return [f"{shlex.join(argv)}: clare-dist refuses it ({error})"]
    if namespace.command in RAY_COMMANDS and not namespace.address:
        return [f"{shlex.join(argv)}: joins Ray without --address (use --address auto in a RayJob)"]
    return []


def entrypoint_problems(job: dict) -> list[str]:
    """Every command of a RayJob's entrypoint exists and accepts its arguments.

    KubeRay's K8sJobMode submitter pastes the entrypoint unquoted into its own shell script
    (`... else ray job submit ... -- <entrypoint> ; fi`), so a `;`, `&&` or `||` outside quotes
    ends the submission there and runs the rest in the submitter Pod. Several commands go inside
    `bash -c '...'`, starting with `set -e` so that a failed step fails the job.
    """
    entrypoint = job["spec"].get("entrypoint", "")
    outer = shell_commands(entrypoint)
    if len(outer) > 1:
        return [(f"spec.entrypoint has {len(outer)} commands outside quotes: KubeRay's submitter would run all but "
                 "the first in the submitter Pod; put them in bash -c '...'")]
    commands = entrypoint_commands(entrypoint)
    problems = []
    if len(commands) > 1 and commands[0] != ["set", "-e"]:
        problems.append("spec.entrypoint: a script of several commands must start with `set -e`, "
                        "or a failed step would not fail the job")
    if not any(clare_dist_args(c) is not None for c in commands):
        problems.append(f"spec.entrypoint runs no clare-dist command: {entrypoint!r}")
    return problems + [problem for command in commands for problem in command_problems(command)]


def submitted_entrypoint(entrypoint: str) -> subprocess.CompletedProcess:
    """What Ray receives for this entrypoint from KubeRay's submitter: KubeRay 1.7's script
    (GetK8sJobCommand) run by bash, with `ray` a function that prints the entrypoint the way
    `ray job submit` joins it (shlex.join), and no PATH, so nothing else can run."""
    record = f"{shlex.quote(sys.executable)} -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))'"
    script = (
        'ray() { if [ "$2" = status ]; then return 1; fi; while [ "$1" != -- ]; do shift; done; shift; '
        f'{record} "$@"; }}; '
        "if ray job status --address http://head:8265 job-1 >/dev/null 2>&1 ; "
        "then ray job logs --address http://head:8265 --follow job-1 ; "
        f"else ray job submit --address http://head:8265 --submission-id job-1 -- {entrypoint.strip()} ; fi"
    )
    bash = shutil.which("bash") or pytest.skip("needs bash")
    return subprocess.run([bash, "-c", script], capture_output=True, text=True, timeout=30, env={"PATH": "/nonexistent"},
                          check=False)


def mounts(container: dict) -> dict[str, bool]:
    """mountPath → readOnly."""
    return {m["mountPath"].rstrip("/"): bool(m.get("readOnly")) for m in container.get("volumeMounts") or []}


def mount_for(path: Path, container_mounts: dict[str, bool]) -> str | None:
    """The mount a path is on (the longest mountPath it is under), if any."""
    candidates = [m for m in container_mounts if path == Path(m) or Path(m) in path.parents]
    return max(candidates, key=len, default=None)


def written_paths(namespace: argparse.Namespace) -> set[str]:
    """The arguments a clare-dist command writes to: its output, and the bundle when indexing."""
    return {"out"} | ({"bundle"} if getattr(namespace, "build_index", False) else set())


def entrypoint_path_problems(job: dict) -> list[str]:
    """The paths the entrypoint names are on volumes, in the head (the driver) and in every worker
    (Ray tasks read and write them there too), and what it writes is not on a read-only mount."""
    problems = []
    for argv in entrypoint_commands(job["spec"].get("entrypoint", "")):
        args = clare_dist_args(argv)
        namespace = parse_clare_dist(args)[0] if args is not None else None
        if namespace is None:
            continue
        for field, value in vars(namespace).items():
            if not (isinstance(value, Path) and value.is_absolute()):
                continue
            for at, group in groups(job):
                container_mounts = mounts(ray_container(group))
                mount = mount_for(value, container_mounts)
                if mount is None:
                    problems.append(f"{at}: {namespace.command} --{field.replace('_', '-')} {value} is on no volume")
                elif field in written_paths(namespace) and container_mounts[mount]:
                    problems.append(f"{at}: {namespace.command} writes {value}, on the read-only mount {mount}")
    return problems


# ---- conventions of this deployment -----------------------------------------------------------


def gpu_problems(doc: dict) -> list[str]:
    """GPU groups ask for GPUs in limits, tolerate the GPU taint and run the GPU image; CPU groups
    run the CPU image; the head runs no Ray work (num-cpus "0")."""
    problems = []
    for at, group in groups(doc):
        container = ray_container(group)
        limits = (container.get("resources") or {}).get("limits") or {}
        tolerations = group["template"]["spec"].get("tolerations") or []
        variant = container["image"].rsplit("-", 1)[-1]
        if at.endswith("headGroupSpec") and group.get("rayStartParams", {}).get("num-cpus") != "0":
            problems.append(f"{at}: the head should have rayStartParams num-cpus: \"0\"")
        if GPU in limits:
            if not any(t.get("key") == GPU for t in tolerations):
                problems.append(f"{at}: asks for {GPU} but does not tolerate the {GPU} taint")
            if variant != "gpu":
                problems.append(f"{at}: asks for {GPU} but runs {container['image']}, not the -gpu image")
        elif variant != "cpu":
            problems.append(f"{at}: has no GPU but runs {container['image']}, not the -cpu image")
    return problems


def job_policy_problems(job: dict) -> list[str]:
    """A RayJob gives its cluster back when done, retries, and cannot hold GPUs forever."""
    spec = job["spec"]
    problems = []
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("spec.shutdownAfterJobFinishes should be true: the cluster is deleted after the job")
    for field in ("ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit"):
        if field not in spec:
            problems.append(f"spec.{field} should be set")
    return problems


def non_root_problems(doc: dict) -> list[str]:
    """Every Pod runs as the image's non-root user (uid 1000), which Kubernetes can verify."""
    problems = []
    for at, pod in pod_specs(doc):
        context = pod.get("securityContext") or {}
        if context.get("runAsNonRoot") is not True or context.get("runAsUser") != NON_ROOT_UID:
            problems.append(f"{at}: securityContext needs runAsNonRoot: true and runAsUser: {NON_ROOT_UID}")
    return problems


def kustomization() -> dict:
    return yaml.safe_load((KUBERAY_DIR / "kustomization.yaml").read_text())


# ==== the tests ================================================================================


@pytest.mark.parametrize("item", ray_objects(), ids=object_id)
def test_manifest_matches_the_kuberay_crd(item, crd_dir):
    assert kr.schema_problems(item[1], crd_dir) == []


@pytest.mark.parametrize("item", ray_objects(), ids=object_id)
def test_manifest_passes_the_operator_checks(item):
    assert kr.operator_problems(item[1]) == []


@pytest.mark.parametrize("item", ray_objects(), ids=object_id)
def test_manifest_follows_the_gpu_and_head_conventions(item):
    assert gpu_problems(item[1]) == []


@pytest.mark.parametrize("item", all_objects(), ids=object_id)
def test_every_pod_runs_as_non_root(item):
    assert non_root_problems(item[1]) == []


@pytest.mark.parametrize("item", all_objects(), ids=object_id)
def test_every_object_is_named_and_leaves_the_namespace_to_kustomize_or_kubectl(item):
    metadata = item[1]["metadata"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", metadata["name"]) and len(metadata["name"]) <= 63
    assert "namespace" not in metadata


def test_the_deployment_has_the_three_workloads():
    assert sorted(doc["metadata"]["name"] for doc in jobs()) == ["clare-embed", "clare-train"]
    assert [doc["metadata"]["name"] for doc in services()] == ["clare-serve"]


def test_the_train_job_runs_five_folds_on_five_gpus():
    (gpu_group,) = [g for _, g in groups(the("RayJob", "clare-train")) if GPU in ray_container(g)["resources"]["limits"]]
    assert gpu_group["minReplicas"] == gpu_group["maxReplicas"] == gpu_group["replicas"] == 5
    assert ray_container(gpu_group)["resources"]["limits"][GPU] == 1


def test_the_embed_job_autoscales_a_cpu_and_a_gpu_group():
    job = the("RayJob", "clare-embed")
    assert job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    with_gpu = [GPU in ray_container(g)["resources"]["limits"] for g in workers]
    assert sorted(with_gpu) == [False, True]
    assert all(g["minReplicas"] == 0 < g["maxReplicas"] for g in workers)


@pytest.mark.parametrize("job", jobs(), ids=lambda d: d["metadata"]["name"])
def test_rayjob_policies(job):
    assert job_policy_problems(job) == []


@pytest.mark.parametrize("job", jobs(), ids=lambda d: d["metadata"]["name"])
def test_rayjob_entrypoint_is_a_command_clare_dist_accepts(job):
    assert entrypoint_problems(job) == []


@pytest.mark.parametrize("job", jobs(), ids=lambda d: d["metadata"]["name"])
def test_rayjob_entrypoint_reaches_ray_whole_through_kuberays_submitter(job):
    submitted = submitted_entrypoint(job["spec"]["entrypoint"])
    assert submitted.stderr == ""
    (ray_entrypoint,) = submitted.stdout.splitlines()
    assert entrypoint_commands(ray_entrypoint) == entrypoint_commands(job["spec"]["entrypoint"])


@pytest.mark.parametrize("job", jobs(), ids=lambda d: d["metadata"]["name"])
def test_rayjob_entrypoint_paths_are_on_the_right_volumes(job):
    assert entrypoint_path_problems(job) == []


@pytest.mark.parametrize("service", services(), ids=lambda d: d["metadata"]["name"])
def test_rayservice_serves_serve_config_yaml(service):
    assert serve_config_problems(service) == []


@pytest.mark.parametrize("service", services(), ids=lambda d: d["metadata"]["name"])
def test_rayservice_pods_mount_the_bundle_and_get_the_token(service):
    assert bundle_mount_problems(service) + token_env_problems(service) + probe_problems(service) == []


def test_rayservice_settings():
    spec = the("RayService", "clare-serve")["spec"]
    assert spec["excludeHeadPodFromServeSvc"] is True
    assert spec["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert spec["upgradeStrategy"]["type"] == "NewCluster"


@pytest.mark.parametrize("service", services(), ids=lambda d: d["metadata"]["name"])
def test_rayservice_application_builds_with_the_configured_args(service):
    assert serve_app_problems(service) == []


def test_serve_import_path_is_in_the_wheel():
    """The application's package is one setuptools packages (an include pattern, an __init__.py):
    importing it from the repository is not enough, the image installs the wheel."""
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for app in yaml.safe_load(SERVE_CONFIG.read_text())["applications"]:
        package = app["import_path"].partition(":")[0].split(".")[0]
        assert any(fnmatch.fnmatch(package, pattern) for pattern in include), f"{package} is not in {include}"
        assert (REPO / package / "__init__.py").is_file(), f"{package}/__init__.py is missing: setuptools would skip it"


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


def test_kustomization_lists_every_manifest_not_run_on_demand():
    listed = set(kustomization()["resources"])
    files = {p.name for p in manifest_files()}
    assert listed | NOT_IN_KUSTOMIZATION == files
    assert not listed & NOT_IN_KUSTOMIZATION


def test_kustomize_build_gives_every_pod_the_published_bundle():
    """`kubectl kustomize` (offline) fills the model version into every bundle mount."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here")
    built = subprocess.run([kubectl, "kustomize", str(KUBERAY_DIR)], capture_output=True, text=True, timeout=60, check=False)
    assert built.returncode == 0, built.stderr
    objects = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    (service,) = [doc for doc in objects if doc["kind"] == "RayService"]
    (literal,) = kustomization()["configMapGenerator"][0]["literals"]
    subpaths = [m.get("subPath") for _, group in groups(service) for m in ray_container(group)["volumeMounts"]
                if m["name"] == "models"]
    assert subpaths == [f"bundles/{literal.split('=', 1)[1]}"] * len(list(groups(service)))
    assert serve_config_problems(service) == []
    assert {doc["metadata"].get("namespace") for doc in objects} == {kustomization()["namespace"]}


# ==== the checks bite: broken copies of the real manifests =====================================


def test_schema_check_catches_a_misspelled_field(crd_dir):
    service = the("RayService", "clare-serve")
    service["spec"]["serveConfigV3"] = service["spec"].pop("serveConfigV2")
    assert any("'serveConfigV3' was unexpected" in p for p in kr.schema_problems(service, crd_dir))

    job = the("RayJob", "clare-train")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    assert any("'rayStartParam' was unexpected" in p for p in kr.schema_problems(job, crd_dir))


def test_checks_catch_a_ray_start_param_that_is_not_a_string(crd_dir):
    job = the("RayJob", "clare-embed")
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert any("num-cpus: 0 is not of type 'string'" in p for p in kr.schema_problems(job, crd_dir))
    assert any("must be a string" in p for p in kr.operator_problems(job))


def test_schema_accepts_int_or_string_quantities_and_null_fields(crd_dir):
    job = the("RayJob", "clare-train")
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    ray_container(group)["resources"]["limits"][GPU] = "1"
    group["template"]["metadata"] = None
    assert kr.schema_problems(job, crd_dir) == []
    ray_container(group)["resources"]["limits"]["cpu"] = "eight"
    assert any("limits.cpu" in p for p in kr.schema_problems(job, crd_dir))


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["metadata"].update(name="clare-" + "x" * 42), "a RayJob name may have 47"),
    (lambda d: d["metadata"].update(name="Clare_Train"), "DNS-1035"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas=6), "minReplicas 6 > maxReplicas 5"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas=7, maxReplicas=6), "outside"),
    (lambda d: d["spec"].update(shutdownAfterJobFinishes=False), "needs shutdownAfterJobFinishes"),
    (lambda d: d["spec"].update(submissionMode="K8sMode"), "submissionMode"),
    (lambda d: d["spec"].update(activeDeadlineSeconds=0), "activeDeadlineSeconds must be greater than 0"),
    (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].update(resources={"CPU": "1"}), "both in rayStartParams"),
    (lambda d: d["spec"]["rayClusterSpec"].update(rayVersion="2.51.0"), "token mode needs rayVersion"),
    (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"].update(containers=[]),
     "needs at least one container"),
], ids=["long-name", "not-dns", "min-over-max", "replicas-outside", "ttl-without-shutdown", "submission-mode",
        "deadline-zero", "resources-twice", "auth-needs-new-ray", "no-container"])
def test_operator_checks_catch(change, expected):
    job = the("RayJob", "clare-train")
    change(job)
    assert any(expected in p for p in kr.operator_problems(job)), kr.operator_problems(job)


def test_operator_checks_catch_a_bad_upgrade_strategy():
    service = the("RayService", "clare-serve")
    service["spec"]["upgradeStrategy"] = {"type": "BlueGreen"}
    assert any("upgradeStrategy.type 'BlueGreen'" in p for p in kr.operator_problems(service))
    service["spec"]["upgradeStrategy"] = {"type": "NewClusterWithIncrementalUpgrade"}
    assert any("clusterUpgradeOptions is required" in p for p in kr.operator_problems(service))


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


@pytest.mark.parametrize("old, new, expected", [
    ("clare-dist train", "clare-dist trian", "invalid choice: 'trian'"),
    ("clare-dist train", "clare-dst train", "'clare-dst' is not a command"),
    ("--epochs 30", "--epocs 30", "unrecognized arguments: --epocs"),
    ("--epochs 30", "--epoch 30", "unrecognized arguments: --epoch"),
    (" --address auto", "", "without --address"),
    ("--references /workspace/refs ", "", "the following arguments are required: --references"),
], ids=["subcommand", "program", "flag", "abbreviated-flag", "no-address", "missing-required"])
def test_entrypoint_check_catches(old, new, expected):
    job = the("RayJob", "clare-train")
    assert old in job["spec"]["entrypoint"]
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace(old, new)
    assert any(expected in p for p in entrypoint_problems(job)), entrypoint_problems(job)


def test_entrypoint_check_catches_commands_the_submitter_would_run():
    job = the("RayJob", "clare-embed")
    script = inner_script(shell_commands(job["spec"]["entrypoint"])[0])
    job["spec"]["entrypoint"] = script
    assert any("KubeRay's submitter would run all but the first" in p for p in entrypoint_problems(job))
    without_set_e = the("RayJob", "clare-embed")
    without_set_e["spec"]["entrypoint"] = shlex.join(["bash", "-c", script.removeprefix("set -e;")])
    assert any("must start with `set -e`" in p for p in entrypoint_problems(without_set_e))

    submitted = submitted_entrypoint(script)  # Ray would get `set -e`; the rest runs (here: fails) in bash
    assert submitted.stdout.splitlines() == ["set -e"] and "not found" in submitted.stderr


def test_entrypoint_check_reads_python_m_and_shell_guards():
    script = "set -e\ntest -f a || clare-dist references --out r && python -m clare_dist evaluate \\\n --run r --folds 0,1"
    assert entrypoint_commands(shlex.join(["bash", "-c", script])) == shell_commands(script) == [
        ["set", "-e"], ["test", "-f", "a"], ["clare-dist", "references", "--out", "r"],
        ["python", "-m", "clare_dist", "evaluate", "--run", "r", "--folds", "0,1"],
    ]
    assert command_problems(["python", "-m", "clare_dist", "evaluate", "--run", "/r"]) == []
    assert command_problems(["python", "-m", "no_such_module_here"])


def test_path_check_catches_unmounted_and_read_only_outputs():
    job = the("RayJob", "clare-train")
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace("--out /workspace/runs/resnet50", "--out /scratch/run")
    assert any("--out /scratch/run is on no volume" in p for p in entrypoint_path_problems(job))

    job = the("RayJob", "clare-embed")
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace("--out /workspace/screened/backlog", "--out /backlog/out")
    assert any("on the read-only mount /backlog" in p for p in entrypoint_path_problems(job))

    job = the("RayJob", "clare-embed")
    worker = ray_container(job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0])
    worker["volumeMounts"] = [m for m in worker["volumeMounts"] if m["mountPath"] != "/backlog"]
    assert any(p.startswith("spec.rayClusterSpec.workerGroupSpecs[0]") and "/backlog is on no volume" in p
               for p in entrypoint_path_problems(job))


def test_serve_checks_catch_a_drifted_or_invalid_config():
    service = the("RayService", "clare-serve")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    config["applications"][0]["args"]["max_body_mb"] = 32
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert any("differs from serve/config.yaml" in p for p in serve_config_problems(service))

    config["applications"][0]["deployments"][0]["max_ongoing_requests"] = -1
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert any("not a valid Serve config" in p for p in serve_config_problems(service))

    config["applications"][0]["deployments"][0] = {"name": "ClareAPI", "max_ongoing_request": 8}
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert any("max_ongoing_request: DeploymentSchema has no such field" in p for p in serve_config_problems(service))


def test_serve_app_check_catches_a_wrong_deployment_arg_or_import_path():
    service = the("RayService", "clare-serve")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    config["applications"][0]["deployments"][1]["name"] = "Regresor"
    config["applications"][0]["args"]["max_body_m"] = 64
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    problems = serve_app_problems(service)
    assert any("configures 'Regresor'" in p for p in problems)
    assert any("max_body_m: AppArgs has no such field" in p for p in problems)

    config["applications"][0]["args"] = {"bundle": "/models/bundle", "max_body_mb": -1}
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert any("fails with the config's args" in p and "max_body_mb" in p for p in serve_app_problems(service))

    config["applications"][0]["import_path"] = "serve.app:no_such_builder"
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    assert any("is not a callable application builder" in p for p in serve_app_problems(service))


def test_service_checks_catch_a_missing_mount_token_or_probe():
    service = the("RayService", "clare-serve")
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    ray_container(workers[0])["volumeMounts"][0]["subPath"] = "bundles/m-other"
    ray_container(workers[1])["volumeMounts"][0]["readOnly"] = False
    assert any("different bundles" in p for p in bundle_mount_problems(service))
    assert any("must be readOnly" in p for p in bundle_mount_problems(service))

    ray_container(workers[0])["env"] = [{"name": TOKEN_ENV, "value": "secret-in-git"}]
    ray_container(workers[1])["env"] = []
    problems = token_env_problems(service)
    assert any("must come from a Secret" in p for p in problems) and any("is not set" in p for p in problems)

    ray_container(workers[0])["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": 8000}}
    assert any("/-/healthz" in p for p in probe_problems(service))


def test_convention_checks_catch_a_gpu_group_without_toleration_or_gpu_image():
    job = the("RayJob", "clare-train")
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["template"]["spec"]["tolerations"] = []
    ray_container(group)["image"] = ray_container(group)["image"].replace("-gpu", "-cpu")
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"] = {}
    problems = gpu_problems(job)
    assert any("does not tolerate" in p for p in problems)
    assert any("not the -gpu image" in p for p in problems)
    assert any("num-cpus" in p for p in problems)

    del job["spec"]["activeDeadlineSeconds"]
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["securityContext"] = {}
    assert job_policy_problems(job) == ["spec.activeDeadlineSeconds should be set"]
    assert any("runAsNonRoot" in p for p in non_root_problems(job))


def serve_settings_problems(service: dict) -> list[str]:
    """Every Ray container of a RayService must start Serve with the settings `clare-dist serve`
    uses (throughput-optimised path, HAProxy ingress): Serve reads them where it starts."""
    from serve.app import HAPROXY_INGRESS, THROUGHPUT_OPTIMIZED

    expected = THROUGHPUT_OPTIMIZED | HAPROXY_INGRESS
    problems = []
    for at, group in groups(service):
        env = {e["name"]: e.get("value") for e in ray_container(group).get("env", [])}
        problems += [f"{at}: {name} is {env.get(name)!r}, expected {value!r}" for name, value in expected.items()
                     if env.get(name) != value]
    return problems


def test_every_serve_pod_starts_serve_with_the_products_settings():
    for service in services():
        assert serve_settings_problems(service) == []


def test_serve_settings_check_catches_a_pod_without_haproxy():
    service = the("RayService", "clare-serve")
    (_, head), *_ = groups(service)
    ray_container(head)["env"] = [e for e in ray_container(head)["env"] if e["name"] != "RAY_SERVE_ENABLE_HA_PROXY"]
    assert any("RAY_SERVE_ENABLE_HA_PROXY is None" in p for p in serve_settings_problems(service))
