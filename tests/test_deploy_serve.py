"""The RayService's Serve application (deploy/kuberay/rayservice-serve.yaml), checked offline: its
serveConfigV2 is serve/config.yaml and Ray's schema accepts it, the application builds with the
config's args and has every deployment the config configures, every Pod mounts the one bundle
and gets the API token from a Secret and Serve's settings, and the package is in the wheel. The
tests at the end feed the checkers broken copies of the real service.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from deploy_files import (
    KUBERAY_DIR,
    REPO,
    SERVE_CONFIG,
    groups,
    kustomization,
    object_name,
    pyproject,
    ray_container,
    services,
    the,
)

TOKEN_ENV = "CLARE_API_TOKEN"


# ---- the checkers ---------------------------------------------------------------------------


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


# ---- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("service", services(), ids=object_name)
def test_rayservice_serves_serve_config_yaml(service):
    assert serve_config_problems(service) == []


@pytest.mark.parametrize("service", services(), ids=object_name)
def test_rayservice_pods_mount_the_bundle_and_get_the_token(service):
    assert bundle_mount_problems(service) + token_env_problems(service) + probe_problems(service) == []


def test_rayservice_settings():
    spec = the("RayService", "clare-serve")["spec"]
    assert spec["excludeHeadPodFromServeSvc"] is True
    assert spec["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert spec["upgradeStrategy"]["type"] == "NewCluster"


@pytest.mark.parametrize("service", services(), ids=object_name)
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


def test_every_serve_pod_starts_serve_with_the_products_settings():
    for service in services():
        assert serve_settings_problems(service) == []


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


# ---- the checks bite: broken copies of the real service -------------------------------------


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


def test_serve_settings_check_catches_a_pod_without_haproxy():
    service = the("RayService", "clare-serve")
    (_, head), *_ = groups(service)
    ray_container(head)["env"] = [e for e in ray_container(head)["env"] if e["name"] != "RAY_SERVE_ENABLE_HA_PROXY"]
    assert any("RAY_SERVE_ENABLE_HA_PROXY is None" in p for p in serve_settings_problems(service))
