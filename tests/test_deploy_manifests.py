"""The KubeRay manifests (deploy/kuberay), checked offline: against KubeRay's upstream CRDs and the
operator's own rules (tests/kuberay_schema.py), and this deployment's conventions (GPU groups,
a head without work, non-root Pods, clean-up policies, what kustomization.yaml lists). The tests
at the end feed the checkers broken copies of the real manifests, to show each check catches
what it is for.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import kuberay_schema as kr
import pytest
from conftest import KUBERAY_CRDS, missing_shared
from deploy_files import (
    NON_ROOT_UID,
    all_objects,
    groups,
    jobs,
    kustomization,
    manifest_files,
    object_id,
    object_name,
    ray_container,
    ray_objects,
    services,
    the,
)

# In deploy/kuberay but deliberately not in kustomization.yaml: `kubectl apply -k` must never
# start GPU work, and the others need CRDs or a real secret that the cluster may not have.
NOT_IN_KUSTOMIZATION = {
    "rayjob-train.yaml", "rayjob-embed.yaml", "job-publish-bundle.yaml", "podmonitor.yaml", "secret-api-token.example.yaml",
    "rayjob-embed-pacs.yaml", "listener.yaml", "secret-pacs-credentials.example.yaml",  # need a PACS and its account
}
GPU = "nvidia.com/gpu"


# ---- the conventions of this deployment -----------------------------------------------------


@pytest.fixture(scope="session")
def crd_dir() -> Path:
    if not KUBERAY_CRDS.is_dir():
        missing_shared("the upstream KubeRay CRDs", KUBERAY_CRDS)
    return KUBERAY_CRDS


def pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """Every Pod template's spec in an object: Ray groups, or a batch Job's or a Deployment's template."""
    for at, group in groups(doc):
        yield at, group["template"]["spec"]
    if doc.get("kind") in ("Job", "Deployment"):
        yield "spec.template", doc["spec"]["template"]["spec"]


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


# ---- the tests ------------------------------------------------------------------------------


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
    assert sorted(doc["metadata"]["name"] for doc in jobs()) == ["clare-embed", "clare-embed-pacs", "clare-train"]
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


@pytest.mark.parametrize("job", jobs(), ids=object_name)
def test_rayjob_policies(job):
    assert job_policy_problems(job) == []


def test_the_pacs_job_and_the_listener_take_their_credentials_from_the_secret_only():
    from clare_dist.cli import build_parser

    job = the("RayJob", "clare-embed-pacs")
    (listener,) = [d for _, d in all_objects() if d["kind"] == "Deployment" and d["metadata"]["name"] == "clare-listener"]
    container = listener["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"])
    assert args.func.__name__ == "cmd_listen" and args.port == 11112 and args.store_results_to
    assert "--store-results" in job["spec"]["entrypoint"] and "--dicomweb" in job["spec"]["entrypoint"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    for env in (head["env"], container["env"]):
        secret = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
        assert secret["CLARE_PACS_USER"] == secret["CLARE_PACS_PASSWORD"] == "clare-pacs-credentials"
    for text in (job["spec"]["entrypoint"], " ".join(container["args"])):
        assert "password" not in text.lower() and "@" not in text
    (service,) = [d for _, d in all_objects() if d["kind"] == "Service" and d["metadata"]["name"] == "clare-listener"]
    assert service["spec"]["selector"] == listener["spec"]["selector"]["matchLabels"]
    assert non_root_problems(listener) == []


def test_kustomization_lists_every_manifest_not_run_on_demand():
    listed = set(kustomization()["resources"])
    files = {p.name for p in manifest_files()}
    assert listed | NOT_IN_KUSTOMIZATION == files
    assert not listed & NOT_IN_KUSTOMIZATION


# ---- the checks bite: broken copies of the real manifests -----------------------------------


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
