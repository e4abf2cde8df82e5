"""The Serve application over real HTTP on loopback, in each topology: answers equal
`clare-dist predict`, every error class is a JSON 4xx, concurrent requests are answered right,
and a killed regressor replica is replaced."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image
from scan_files import dicom_bytes, gradient

from clare_dist.bundle import load_bundle

from conftest import connect_ray

TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY_MB = 1


@pytest.fixture(scope="module")
def archive_images(tiny_archive) -> list[Path]:
    labels = pd.read_parquet(tiny_archive / "prepared" / "labels.parquet")
    return [tiny_archive / "archive" / "images" / name for name in labels["image_index"][:24]]


# The deployments of each topology, and the one whose replicas run the regressor.
DEPLOYMENTS = {"single": {"ClareAPI"}, "ingress": {"ClareAPI", "Regressor"},
               "chain": {"ClareAPI", "Preprocessor", "Regressor", "CaseLookup"}}
REGRESSING = {"single": "ClareAPI", "ingress": "Regressor", "chain": "Regressor"}


@pytest.fixture(scope="module", params=list(DEPLOYMENTS))
def app_url(request, ray_address, indexed_tiny_bundle, tiny_archive, batch_screenings):
    """The app as `clare-dist serve` builds it, in each topology, with the API token set in the
    replicas' environment (as a Kubernetes Secret would) and a 1 MiB body limit. The batch job of
    `batch_screenings` runs first: beside a deployed app its tasks would find no free CPU here."""
    import ray
    from ray import serve

    from serve.api import TOKEN_ENV
    from serve.app import APP_NAME, build_app

    from conftest import start_serve

    connect_ray(ray_address)
    port = start_serve()  # before the token: Serve's controller (and apps deployed later from a config) must not inherit it
    ray.shutdown()
    ray.init(address=ray_address, runtime_env={"env_vars": {TOKEN_ENV: TOKEN}})
    args = {"bundle": str(indexed_tiny_bundle), "topology": request.param, "images_root": str(tiny_archive / "archive"),
            "max_body_mb": MAX_BODY_MB, "ort_threads": 1,
            "max_queue_wait_s": 120}  # admission is test_serve_overload's: here 16 concurrent scans must all be answered
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete(APP_NAME)
    ray.shutdown()


def predict_cli(scan: Path, bundle: Path, capsys) -> dict:
    from clare_dist.cli import main

    assert main(["predict", str(scan), "--bundle", str(bundle), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_same_screening(answer: dict, expected: dict) -> None:
    assert answer["decision"] == expected["combination"]
    assert answer["classes"] == {code: expected[code] for code in ("Ca", "Pa", "Pn", "Pl", "Ot")}
    assert [t["combination"] for t in answer["top3"]] == expected["top3"]
    assert [t["distance"] for t in answer["top3"]] == pytest.approx(expected["top3_distances"], abs=1e-5)
    assert [answer["coordinates"]["x"], answer["coordinates"]["y"]] == pytest.approx([expected["x"], expected["y"]], abs=1e-5)
    assert answer["explanation"] == expected["explanation"]
    assert [c["case_id"] for c in answer["similar_cases"]] == [c["case_id"] for c in expected["similar_cases"]]
    assert answer["similar_note"] == expected["similar_note"]
    assert answer["model_version"] == expected["model_version"]


def test_ready_and_alive(app_url, indexed_tiny_bundle, request):
    from ray import serve

    from serve.app import APP_NAME

    deployments = set(serve.status().applications[APP_NAME].deployments)
    topology = request.node.callspec.params["app_url"]
    assert deployments == DEPLOYMENTS[topology]
    version = load_bundle(indexed_tiny_bundle).model_version
    ready = requests.get(f"{app_url}/readyz", timeout=30)
    assert ready.status_code == 200
    body = ready.json()
    assert {k: body[k] for k in ("ready", "state", "model_version", "stages")} == {
        "ready": True, "state": "ready", "model_version": version,
        "stages": {"Preprocessor": version, "Regressor": version, "CaseLookup": version}}
    assert not any(body["queue"]["shed"].values()) and body["queue"]["slots"] >= 1  # the admission queue, not shedding
    assert requests.get(f"{app_url}/healthz", timeout=30).json() == {"status": "alive"}
    paths = requests.get(f"{app_url}/openapi.json", timeout=30).json()["paths"]
    assert {"/v1/predict", "/v1/predict/plot", "/v1/cases/{case_id}/image", "/healthz", "/readyz"} <= set(paths)
    assert requests.get(f"{app_url}/docs", timeout=30).status_code == 200


def test_png_answer_equals_clare_dist_predict(app_url, indexed_tiny_bundle, archive_images, capsys, request):
    scan = archive_images[0]
    response = requests.post(f"{app_url}/v1/predict?k=5", data=scan.read_bytes(),
                             headers=AUTH | {"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = predict_cli(scan, indexed_tiny_bundle, capsys)  # k=9 there: compare the first 5 cases
    known = len(expected["similar_cases"])
    expected["similar_cases"] = expected["similar_cases"][:5]
    if known > 5:  # the note says when the decision has fewer known cases than asked for
        expected["similar_note"] = None
    assert_same_screening(answer, expected)
    assert response.headers["x-request-id"] == answer["request_id"] != ""
    assert response.headers["x-model-version"] == answer["model_version"]
    assert "not a certified medical device" in answer["intended_use"]
    queue = {"queue"} if request.node.callspec.params["app_url"] == "single" else set()  # waiting for a scan worker
    assert {stage.split(";")[0] for stage in response.headers["server-timing"].split(", ")} == {"admission", "decode", "regress", "lookup", "chain"} | queue


@pytest.fixture(scope="module")
def batch_screenings(ray_address, indexed_tiny_bundle, archive_images, tmp_path_factory) -> dict:
    """Scan id → Screening of the rows `clare-dist embed` wrote for six archive scans and a DICOM."""
    import shutil
    import subprocess
    import sys

    from clare_dist.batch import read_results
    from clare_dist.report import row_screening

    folder = tmp_path_factory.mktemp("three-way")
    archive = folder / "scans"
    archive.mkdir()
    for scan in archive_images[:6]:
        shutil.copy(scan, archive / scan.name)
    (archive / "scan.dcm").write_bytes(dicom_bytes(gradient(64, 64).astype(np.uint16) * 16, bits_stored=12))
    done = subprocess.run([sys.executable, "-m", "clare_dist", "embed", "--bundle", str(indexed_tiny_bundle),
                           "--archive", str(archive), "--out", str(folder / "out"), "--address", ray_address],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_results(folder / "out")
    return {path: row_screening(row) for path, (_, row) in zip(rows["path"], rows.iterrows())}


def test_batch_row_predict_json_and_api_answer_are_equal_field_by_field(app_url, indexed_tiny_bundle, batch_screenings,
                                                                         capsys):
    """One result type: for the same scan the three encodings carry the same screening."""
    from clare_dist.encode.api_json import api_answer
    from clare_dist.result import Screening

    for path, batch in batch_screenings.items():
        assert batch.ok, batch
        predicted = Screening.from_dict(predict_cli(Path(path), indexed_tiny_bundle, capsys))
        response = requests.post(f"{app_url}/v1/predict", data=Path(path).read_bytes(), timeout=60,
                                 headers=AUTH | {"Content-Type": "application/octet-stream"})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert_fields_equal(predicted, batch)
        assert answer.keys() == api_answer(batch, answer["request_id"]).keys()
        assert_fields_equal(predicted, batch, answer)


def test_the_listeners_api_client_reads_the_answer_into_the_batch_screening(app_url, indexed_tiny_bundle, batch_screenings,
                                                                          monkeypatch):
    """`listen --serve-url` on the real API: the DICOM scan's screening read back from the answer
    is the batch row's; without the token, or for another bundle, the instance waits, in words."""
    from clare_dist.pacs.errors import PacsError
    from clare_dist.pacs.serve_client import ENV_API_TOKEN, screen_on_api

    (path, batch), = [(p, b) for p, b in batch_screenings.items() if p.endswith(".dcm")]
    version = load_bundle(indexed_tiny_bundle).model_version
    monkeypatch.setenv(ENV_API_TOKEN, TOKEN)
    screened = screen_on_api(app_url, Path(path).read_bytes(), batch.scan_id, version)
    assert_fields_equal(screened, batch)
    with pytest.raises(PacsError, match=f"runs model {version}, the listener's bundle is other"):
        screen_on_api(app_url, Path(path).read_bytes(), batch.scan_id, "other")
    monkeypatch.delenv(ENV_API_TOKEN)
    with pytest.raises(PacsError) as refused:
        screen_on_api(app_url, Path(path).read_bytes(), batch.scan_id, version)
    assert refused.value.kind == "pacs_auth"


def assert_fields_equal(predicted, batch, answer=None) -> None:
    """Every field of the Screening equal (floats as stored in float32), and the answer's too."""
    import dataclasses

    for field in dataclasses.fields(predicted):
        mine, theirs = getattr(predicted, field.name), getattr(batch, field.name)
        if field.name == "scan_id":
            continue  # predict names a scan by its file name, the batch job by its path in the archive
        if field.name in ("x", "y", "top3_distances"):
            assert np.float32(mine) == pytest.approx(np.float32(theirs), abs=1e-6), field.name
        elif field.name == "similar_cases":
            assert [(c.case_id, c.combination) for c in mine] == [(c.case_id, c.combination) for c in theirs]
            assert [c.distance for c in mine] == pytest.approx([c.distance for c in theirs], abs=1e-6)
        else:
            assert mine == theirs, field.name
    if answer is None:
        return
    assert answer["decision"] == batch.combination and answer["classes"] == batch.classes
    assert [t["combination"] for t in answer["top3"]] == batch.top3
    assert [t["distance"] for t in answer["top3"]] == pytest.approx(batch.top3_distances, abs=1e-6)
    assert [answer["coordinates"]["x"], answer["coordinates"]["y"]] == pytest.approx([batch.x, batch.y], abs=1e-6)
    assert (answer["explanation"], answer["similar_note"], answer["model_version"]) == (
        batch.explanation, batch.similar_note, batch.model_version)
    assert [(c["case_id"], c["combination"]) for c in answer["similar_cases"]] == [
        (c.case_id, c.combination) for c in batch.similar_cases]
    assert [c["distance"] for c in answer["similar_cases"]] == pytest.approx([c.distance for c in batch.similar_cases], abs=1e-6)


def test_dicom_as_multipart_file(app_url, indexed_tiny_bundle, tmp_path, capsys):
    scan = tmp_path / "scan.dcm"
    scan.write_bytes(dicom_bytes(gradient(64, 64).astype(np.uint16) * 16, bits_stored=12, photometric="MONOCHROME1"))
    files = {"file": ("scan.dcm", scan.read_bytes(), "application/dicom")}
    response = requests.post(f"{app_url}/v1/predict", files=files, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    assert_same_screening(response.json(), predict_cli(scan, indexed_tiny_bundle, capsys))


@pytest.mark.parametrize("name, body, content_type, status, error", [
    ("empty", b"", "image/png", 422, "empty"),
    ("truncated", "truncated", "image/png", 422, "truncated"),
    ("text", b"patient list: see the other file\n", "image/png", 422, "not_an_image"),
    ("wrong type", "whole", "text/plain", 415, "unsupported_media_type"),
    ("no type", "whole", "", 415, "unsupported_media_type"),
    ("oversized", b"\x89PNG" + bytes(MAX_BODY_MB * 1024 * 1024), "image/png", 413, "payload_too_large"),
])
def test_bad_requests_get_a_json_reason(app_url, archive_images, name, body, content_type, status, error):
    whole = archive_images[1].read_bytes()
    body = {"truncated": whole[: len(whole) // 2], "whole": whole}.get(body, body) if isinstance(body, str) else body
    response = requests.post(f"{app_url}/v1/predict", data=body, headers=AUTH | {"Content-Type": content_type}, timeout=60)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["error"] == error and answer["detail"]
    assert answer["request_id"] == response.headers["x-request-id"] != ""
    assert answer["model_version"] == response.headers["x-model-version"]


def test_every_hostile_file_is_answered_200_or_422_with_its_kind(app_url):
    """The hostile corpus (tests/hostile_files.py) as request bodies, to both scan routes: never a 5xx."""
    from hostile_files import corpus

    for entry in corpus():
        for route in ("/v1/predict", "/v1/predict/plot"):
            response = requests.post(f"{app_url}{route}", data=entry.data, timeout=60,
                                     headers=AUTH | {"Content-Type": "application/octet-stream"})
            if entry.outcome == "ok":
                assert response.status_code == 200, (entry.name, route, response.text)
            else:
                assert response.status_code == 422, (entry.name, route, response.status_code, response.text)
                assert response.json()["error"] == entry.outcome, (entry.name, route, response.text)


def test_an_oversized_streamed_body_is_cut_off(app_url):
    def chunks():
        for _ in range(MAX_BODY_MB * 4 + 1):
            yield bytes(256 * 1024)

    response = requests.post(f"{app_url}/v1/predict", data=chunks(), headers=AUTH | {"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"


def test_bearer_token_is_required_when_set(app_url, archive_images):
    body, png = archive_images[0].read_bytes(), {"Content-Type": "image/png"}
    for headers in (png, png | {"Authorization": "Bearer wrong"}, png | {"Authorization": TOKEN}):
        response = requests.post(f"{app_url}/v1/predict", data=body, headers=headers, timeout=60)
        assert response.status_code == 401 and response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert requests.get(f"{app_url}/v1/cases/x/image", timeout=60).status_code == 401


def test_invalid_k_is_a_json_422(app_url, archive_images):
    response = requests.post(f"{app_url}/v1/predict?k=0", data=archive_images[0].read_bytes(),
                             headers=AUTH | {"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 422 and response.json()["error"] == "invalid_parameters"


def test_case_images_only_for_indexed_cases(app_url, archive_images):
    case_id = archive_images[3].name
    response = requests.get(f"{app_url}/v1/cases/{case_id}/image", headers=AUTH, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (160, 160)
    for unknown in ("nope.png", "..%2F..%2Fetc%2Fpasswd", "images%2F" + case_id):
        response = requests.get(f"{app_url}/v1/cases/{unknown}/image", headers=AUTH, timeout=60)
        assert response.status_code == 404 and response.headers["content-type"] == "application/json"


def test_plot_is_a_png_of_the_explanation(app_url, archive_images):
    response = requests.post(f"{app_url}/v1/predict/plot", data=archive_images[2].read_bytes(),
                             headers=AUTH | {"Content-Type": "image/png"}, timeout=120)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    figure = Image.open(io.BytesIO(response.content))
    assert figure.width > 800 and figure.height > 300


def test_concurrent_requests_each_get_their_own_answer(app_url, indexed_tiny_bundle, archive_images):
    from clare_dist.screening import Screener

    scans = archive_images[4:20]
    expected = Screener(load_bundle(indexed_tiny_bundle), threads=1).screen(scans)

    def post(scan: Path) -> dict:
        response = requests.post(f"{app_url}/v1/predict", data=scan.read_bytes(),
                                 headers=AUTH | {"Content-Type": "image/png"}, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(post, scans))
    for answer, screening in zip(answers, expected):
        assert_same_screening(answer, screening.to_dict() | {"similar_cases": [c.__dict__ for c in screening.similar_cases]})
    assert len({a["request_id"] for a in answers}) == len(scans)


def test_a_killed_regressor_replica_is_replaced(app_url, archive_images, request):
    import ray

    regressing = REGRESSING[request.node.callspec.params["app_url"]]

    def regressor_replicas() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and f"#{regressing}#" in a["name"]}

    (before,) = regressor_replicas()
    ray.kill(ray.get_actor(before, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 120
    while (not (replicas := regressor_replicas()) or before in replicas) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(replicas) == 1 and before not in replicas, f"the killed replica was not replaced within 2 minutes: {replicas}"
    answered = None
    while answered is None and time.monotonic() < deadline:
        try:
            response = requests.post(f"{app_url}/v1/predict", data=archive_images[5].read_bytes(),
                                     headers=AUTH | {"Content-Type": "image/png"}, timeout=20)
            answered = response.json() if response.status_code == 200 else None
        # HAProxy closes connections while no ingress replica is up yet, and one sent to the
        # killed replica as it went down is never answered: both are retried until the deadline
        except (requests.ConnectionError, requests.Timeout):
            pass
        if answered is None:
            time.sleep(1)
    assert answered is not None, "no answer within 2 minutes of killing the regressor replica"
    assert answered["model_version"] and regressor_replicas() == replicas
    assert requests.get(f"{app_url}/readyz", timeout=30).status_code == 200


@pytest.mark.parametrize("spinning", [False, True])
def test_regressor_spins_only_when_asked(tiny_bundle, spinning):
    """The regressor's ONNX Runtime threads busy-wait only with `ort_spinning` (they would take the
    cores the ingress decodes on); its thread count is explicit, not Ray's OMP_NUM_THREADS."""
    from serve.app import AppArgs
    from serve.stages import Regressor

    args = AppArgs(bundle=str(tiny_bundle), ort_threads=2, ort_spinning=spinning)
    options = Regressor.func_or_class(args.bundle, args.regressor_settings()).session.get_session_options()
    assert options.intra_op_num_threads == 2
    try:
        setting = options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: ONNX Runtime's default, which spins
        setting = None
    assert setting == (None if spinning else "0")


def test_serve_command_builds_the_app_from_its_options(tiny_bundle, monkeypatch):
    """`clare-dist serve` hands its options to the application builder's args (AppArgs) unchanged."""
    from clare_dist import cli
    from serve import app, lifecycle

    given = {}
    monkeypatch.setattr(lifecycle, "serve_until_stopped", lambda args, host, port, address, num_cpus: given.update(args, host=host, port=port))
    argv = ["serve", "--bundle", str(tiny_bundle), "--port", "8123", "--replicas", "2", "--ort-threads", "1",
            "--decode-threads", "1", "--topology", "single", "--max-queue-wait-s", "0.5"]
    assert cli.main(argv) == 0
    settings = app.AppArgs.model_validate({k: v for k, v in given.items() if k not in ("host", "port")})
    assert (settings.replicas, settings.ort_threads, settings.decode_threads, settings.topology) == (2, 1, 1, "single")
    assert given["port"] == 8123 and settings.bundle == str(tiny_bundle.resolve())
    assert (settings.max_queue_wait_s, settings.drain_s) == (0.5, app.DRAIN_S)
    given.clear()
    assert cli.main(argv[:-2]) == 0  # the command's defaults are the application's
    assert (given["max_queue_wait_s"], given["drain_s"]) == (app.AppArgs.model_fields["max_queue_wait_s"].default, app.DRAIN_S)


def test_auto_topology_follows_the_gpus(monkeypatch):
    """`auto` keeps the regressor in the ingress replicas where no GPU is (a deployment of its
    own would share their cores and add a hop) and gives it its own deployment where one is."""
    from serve import app

    assert [app.resolve_topology(t) for t in ("single", "ingress", "chain")] == ["single", "ingress", "chain"]
    monkeypatch.setattr(app, "_cluster_gpus", lambda: 0.0)
    assert app.resolve_topology("auto") == "single"
    monkeypatch.setattr(app, "_cluster_gpus", lambda: 1.0)
    assert app.resolve_topology("auto") == "ingress"


@pytest.mark.parametrize("topology, expected", [
    ("single", {"ClareAPI": {"num_cpus": 1.5, "num_gpus": 1.0}}),
    ("ingress", {"ClareAPI": {"num_cpus": 1.0}, "Regressor": {"num_cpus": 0.5, "num_gpus": 1.0}}),
])
def test_the_replica_that_regresses_gets_the_gpu(tiny_bundle, topology, expected):
    """Given GPUs, the regressor's replicas hold them: ClareAPI's in topology single (it regresses
    itself), the Regressor's otherwise; the ingress alone holds none."""
    from ray.serve import Application

    from serve.app import build_app

    ingress = build_app({"bundle": str(tiny_bundle), "topology": topology, "regressor_gpus": 1})._bound_deployment
    stages = {ingress.name: ingress} | {arg._bound_deployment.name: arg._bound_deployment
                                        for arg in ingress.init_args if isinstance(arg, Application)}
    assert {name: stage.ray_actor_options for name, stage in stages.items()} == expected


def test_a_replica_counts_the_cpus_of_its_ray_node(ray_address):
    """Topology single's scan workers default to the CPUs of the replica's Ray node as Ray counts
    them (KubeRay sets that from the Pod's limit), read where the replica runs: on the worker node,
    not the CPU-less head."""
    import ray

    from conftest import WORKER_CPUS
    from serve.cpus import node_cpus

    connect_ray(ray_address)
    assert ray.get(ray.remote(num_cpus=0.01)(node_cpus).remote(), timeout=60) == WORKER_CPUS
