"""The API contract: the OpenAPI document of the served app says what the API takes and answers,
and schemathesis, run against the live app on loopback with all its checks, finds no answer that
breaks it — no 5xx, no undocumented status, header, content type or body.

The scan bodies it sends are real scans (PNG, JPEG, DICOM of random sizes and content), the same
scans damaged, and random bytes. A scan body is also held to an oracle: the app screens it (200)
exactly when `clare_dist.screening.decode` decodes it, and refuses it (422) with the decoder's
reason otherwise; a decoder failure that is no ScanError (kind 'internal') fails the test.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from scan_files import dicom_bytes, png_bytes

from clare_dist.bundle import load_bundle
from clare_dist.scans import ScanConfig, ScanError
from clare_dist.screening import decode

from conftest import connect_ray

TOKEN = "contract-token-52c1"
MAX_BODY_MB = 1
EXAMPLES = 60  # generated cases per operation and phase
SCAN_ROUTES = ("/v1/predict", "/v1/predict/plot")
# positive_data_acceptance's default statuses, and 422 on the scan routes: a body the schema allows
# (any bytes of an image type) need not be a scan, and 422 is the documented answer when it is not.
# Which of those bodies must be screened is the decoder oracle's to say (`answers_as_the_decoder`).
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


@st.composite
def scan_pixels(draw) -> np.ndarray:
    """A small 8-bit grayscale 'radiograph': a gradient of random slope under random noise (never flat)."""
    height, width = draw(st.integers(16, 72)), draw(st.integers(16, 72))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ramp = np.add.outer(np.linspace(0, rng.uniform(60, 180), height), np.linspace(0, rng.uniform(0, 60), width))
    return np.clip(ramp + rng.normal(0, rng.uniform(0.5, 25), ramp.shape), 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality)
    return out.getvalue()


PNG = scan_pixels().map(lambda p: png_bytes(Image.fromarray(p)))
JPEG = st.builds(_jpeg, scan_pixels(), st.integers(30, 95))
# A fixed instance UID: generated data must be a function of Hypothesis's draws, or it cannot replay them.
DICOM = st.builds(lambda p, photometric: dicom_bytes(p.astype(np.uint16) * 16, bits_stored=12, photometric=photometric,
                                                     SOPInstanceUID="1.2.826.0.1.3680043.8.498.1"),
                  scan_pixels(), st.sampled_from(["MONOCHROME1", "MONOCHROME2"]))


@st.composite
def damaged(draw, scans: st.SearchStrategy[bytes]) -> bytes:
    """A scan cut short, or with a few bytes changed."""
    data = bytearray(draw(scans))
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    for at in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
        data[at] ^= draw(st.integers(1, 255))
    return bytes(data)


def scan_bodies(scans: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(scans, damaged(scans), st.binary(max_size=4096))


schemathesis.openapi.media_type("image/png", scan_bodies(PNG))
schemathesis.openapi.media_type("image/jpeg", scan_bodies(JPEG), aliases=["image/jpg"])
schemathesis.openapi.media_type("application/dicom", scan_bodies(DICOM))
schemathesis.openapi.media_type("application/octet-stream", scan_bodies(st.one_of(PNG, JPEG, DICOM)))


def scan_of(case: schemathesis.Case) -> bytes | None:
    """The scan a case sends to a scan route: its raw body, or its multipart file."""
    if case.operation.path not in SCAN_ROUTES:
        return None
    body = case.body.get("file") if isinstance(case.body, dict) else case.body
    if isinstance(body, bytes):
        return body
    return getattr(body, "data", None)  # schemathesis wraps generated binary strings


def answers_as_the_decoder(config: ScanConfig):
    """The check that a scan route answers a scan as `clare_dist.screening.decode` decodes it."""

    def answers_as_the_decoder(ctx, response, case) -> None:
        scan = scan_of(case)
        if scan is None or response.status_code not in (200, 422):
            return None
        error = response.json().get("error") if response.status_code == 422 else None
        if error == "invalid_parameters":  # k was refused before the body was read
            return None
        try:
            decode(scan, config)
            expected = None
        except ScanError as err:
            expected = err.kind
        assert "internal" not in (error, expected), (
            f"decoding this body raised an exception that is not a ScanError (kind 'internal'; its traceback is in the "
            f"{'server' if error == 'internal' else 'test'} log): {response.text}")
        assert error == expected, f"the decoder says {expected or 'a scan'}; the app answered {response.status_code}: {response.text}"
        return None

    return answers_as_the_decoder


@pytest.fixture(scope="module", params=["single", "chain"])
def api_url(request, ray_address, indexed_tiny_bundle, tiny_archive):
    """The app with the API token set in its replicas' environment and a 1 MiB body limit, in topology single
    (everything in the ingress) and chain (every stage a deployment: the most hops, the most answers to pass on)."""
    import ray
    from ray import serve

    from serve.api import TOKEN_ENV
    from serve.app import APP_NAME, build_app

    from conftest import start_serve

    connect_ray(ray_address)
    port = start_serve()  # before the token: Serve's controller must not inherit it
    ray.shutdown()
    ray.init(address=ray_address, runtime_env={"env_vars": {TOKEN_ENV: TOKEN}})
    serve.run(build_app({"bundle": str(indexed_tiny_bundle), "topology": request.param, "images_root": str(tiny_archive / "archive"),
                         "max_body_mb": MAX_BODY_MB, "ort_threads": 1}), name=APP_NAME, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete(APP_NAME)
    ray.shutdown()


@pytest.fixture(scope="module")
def contract(api_url):
    """The served document, loaded by schemathesis with the token, and the checks' settings."""
    config = schemathesis.Config.from_dict({
        "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
        "auth": {"openapi": {"bearerAuth": {"bearer": TOKEN}}},
        "request-timeout": 60,
        "operations": [{"include-path": list(SCAN_ROUTES),
                        "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED + ["422"]}}}],
    })
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json", config=config, timeout=60)


@pytest.fixture(scope="module")
def decoder_check(indexed_tiny_bundle):
    return answers_as_the_decoder(ScanConfig().sized(load_bundle(indexed_tiny_bundle).image_size))


schema = schemathesis.pytest.from_fixture("contract")


@pytest.mark.timeout(900)  # about 15 s a topology on 2 cores; the bound covers the session fixtures it may be first to build
@schema.parametrize()
def test_every_operation_keeps_the_contract(case, decoder_check):
    """Examples, coverage and fuzzing phases, every operation, all of schemathesis's checks."""
    case.call_and_validate(additional_checks=[decoder_check])


@pytest.mark.timeout(900)
def test_stateful_links_keep_the_contract(contract, decoder_check):
    """Sequences that follow the document's links: a screening's similar cases to their thumbnails."""
    import hypothesis

    class Workflow(contract.as_state_machine()):
        def validate_response(self, response, case, additional_checks=None, **kwargs):
            super().validate_response(response, case, [decoder_check, *(additional_checks or [])], **kwargs)

    settings = contract.config.get_hypothesis_settings()
    Workflow.run(settings=hypothesis.settings(settings, max_examples=EXAMPLES // 3, stateful_step_count=4))


def test_without_the_token_every_v1_route_answers_a_documented_401(api_url):
    document = requests.get(f"{api_url}/openapi.json", timeout=30).json()
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    scan = png_bytes(Image.fromarray(np.add.outer(np.arange(40), np.arange(40)).astype(np.uint8)))
    calls = {"/v1/predict": ("post", scan), "/v1/predict/plot": ("post", scan), "/v1/cases/{case_id}/image": ("get", None)}
    assert {path for path in document["paths"] if path.startswith("/v1/")} == set(calls)
    for path, (method, body) in calls.items():
        operation = document["paths"][path][method]
        assert operation["security"] == [{"bearerAuth": []}], "a server with a token requires it"
        assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        url = f"{api_url}{path.replace('{case_id}', '00000001_000.png')}"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            response = requests.request(method, url, data=body, headers=headers | {"Content-Type": "image/png"}, timeout=60)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert set(response.json()) == set(document["components"]["schemas"]["ErrorBody"]["properties"])
            assert response.json()["error"] == "unauthorized"


def test_the_document_of_a_server_without_a_token_makes_it_optional():
    """The document is the routes' own (no server needed): a server without a token says the token is optional."""
    from serve.api import SCAN_TYPES, api

    state = getattr(api.state, "token_required", None)
    try:
        documents = {}
        for required in (False, True):
            api.state.token_required, api.openapi_schema = required, None
            documents[required] = api.openapi()
    finally:
        api.state.token_required, api.openapi_schema = state, None
    for required, document in documents.items():
        predict = document["paths"]["/v1/predict"]["post"]
        assert predict["security"] == [{"bearerAuth": []}] + ([] if required else [{}])
        assert set(predict["requestBody"]["content"]) == set(SCAN_TYPES) | {"multipart/form-data"}
        assert {"400", "401", "413", "415", "422", "503"} <= set(predict["responses"])
        assert "security" not in document["paths"]["/healthz"]["get"]


def _dx_scan(seed: int) -> bytes:
    from clare_dist.synth import encode_dx

    rows = np.linspace(0, 4095, 96, dtype=np.float64)[:, None]
    noise = np.random.default_rng(seed).integers(0, 400, (96, 96))
    return encode_dx(np.clip(rows + noise, 0, 4095).astype(np.uint16), 12, transfer_syntax="rle")


def test_accept_picks_json_the_dicom_sr_or_the_fhir_bundle(api_url):
    import pydicom

    from clare_dist.encode.dicom_sr import sr_findings
    from clare_dist.encode.fhir import bundle_decision

    scan = _dx_scan(3)
    source = pydicom.dcmread(io.BytesIO(scan))
    post = lambda accept, body=scan, kind="application/dicom": requests.post(  # noqa: E731
        f"{api_url}/v1/predict", data=body, timeout=60, headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": kind,
                                                                 **({"Accept": accept} if accept else {})})
    answer = post(None)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    expected = answer.json()

    sr = post("application/dicom")
    assert sr.status_code == 200 and sr.headers["content-type"] == "application/dicom"
    report = pydicom.dcmread(io.BytesIO(sr.content))
    assert report.StudyInstanceUID == source.StudyInstanceUID and report.SeriesInstanceUID != source.SeriesInstanceUID
    findings = sr_findings(report)
    assert findings["decision"] == expected["decision"] and findings["classes"] == expected["classes"]
    assert findings["explanation"] == expected["explanation"]
    assert report.SOPInstanceUID == pydicom.dcmread(io.BytesIO(post("application/dicom").content)).SOPInstanceUID  # a rerun

    fhir = post("application/fhir+json;q=0.9, application/json;q=0.5")
    assert fhir.status_code == 200 and fhir.headers["content-type"] == "application/fhir+json"
    decision = bundle_decision(fhir.json())
    assert (decision["decision"], decision["classes"]) == (expected["decision"], expected["classes"])
    report_entry = next(e["resource"] for e in fhir.json()["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert report_entry["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{source.StudyInstanceUID}"

    png = png_bytes(Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))))
    no_study = post("application/dicom", png, "image/png")
    assert no_study.status_code == 422 and no_study.json()["error"] == "not_dicom"
    png_fhir = post("application/fhir+json", png, "image/png")
    assert png_fhir.status_code == 200 and "imagingStudy" not in json.dumps(png_fhir.json())

    refused = post("image/png, text/html")
    assert refused.status_code == 406 and refused.json()["error"] == "not_acceptable"
    assert "application/fhir+json" in refused.json()["detail"]
