"""The PACS parts that need no PACS: the selection and its skip reasons, the saved instance list,
credentials kept out of URLs and messages, the WADO-RS answer parsed under its limit."""

from __future__ import annotations

import pytest

from clare_dist.errors import ClareError, UsageError
from clare_dist.pacs.credentials import Credentials
from clare_dist.pacs.dicomweb import DicomWebPacs, _dicom_part
from clare_dist.pacs.errors import PacsError
from clare_dist.pacs.instances import save_instances, saved_instances
from clare_dist.pacs.selection import Instance, Selection


def instance(**values) -> Instance:
    return Instance(**({"study_uid": "1.2.3", "series_uid": "1.2.3.4", "sop_uid": "1.2.3.4.5"} | values))


def test_a_lateral_or_another_body_part_or_modality_is_skipped_with_its_reason():
    chosen = Selection.from_options("DX,CR", None, "CHEST", "PA,AP", None)
    assert chosen.skip(instance(modality="DX", body_part="CHEST", view="PA")) is None
    assert chosen.skip(instance(modality="CR", body_part="chest", view="ap")) is None  # case as many PACS store it
    assert chosen.skip(instance(modality="DX", body_part="CHEST", view="LL"))[0] == "not_frontal"
    assert chosen.skip(instance(modality="DX", body_part="SKULL", view="PA"))[0] == "not_chest"
    assert chosen.skip(instance(modality="CT", body_part="CHEST", view="PA"))[0] == "not_selected_modality"
    kind, reason = chosen.skip(instance(modality="DX", body_part="CHEST", view="LATERAL"))
    assert "LATERAL" in reason and "PA,AP" in reason


def test_what_the_pacs_does_not_record_does_not_skip():
    assert Selection().skip(instance(modality="CR")) is None  # no ViewPosition, no body part: screened


@pytest.mark.parametrize("dates", ["2026-12-01", "20261301", "2026120", "-", "20261201-20261131"])
def test_a_study_date_that_is_no_dicom_date_range_is_refused(dates):
    with pytest.raises(UsageError, match="study-date"):
        Selection(study_dates=dates)


@pytest.mark.parametrize("dates", ["20261201", "20261130-20261201", "20261130-", "-20261201"])
def test_dicom_date_ranges_are_taken(dates):
    assert Selection(study_dates=dates).study_dates == dates


def test_the_instance_list_is_saved_once_and_refused_for_another_query(tmp_path):
    source, selection = {"dicomweb": "http://pacs/dicom-web"}, Selection()
    listed = [instance(sop_uid=f"1.2.{i}") for i in range(3)] + [instance(sop_uid="1.2.0")]  # a page listed twice
    assert saved_instances(tmp_path, source, selection) is None
    saved = save_instances(tmp_path, source, selection, iter(listed))
    assert [i.sop_uid for i in saved] == ["1.2.0", "1.2.1", "1.2.2"]
    assert saved_instances(tmp_path, source, selection) == saved
    with pytest.raises(UsageError, match="another PACS query"):
        saved_instances(tmp_path, source, Selection(views=("PA",)))
    with pytest.raises(UsageError, match="another PACS query"):
        saved_instances(tmp_path, {"dicomweb": "http://other/dicom-web"}, selection)


def test_credentials_never_show_in_a_repr_a_url_or_a_message():
    secret = "s3cr3t-value"
    credentials = Credentials.from_environment({"CLARE_PACS_USER": "ops", "CLARE_PACS_PASSWORD": secret})
    pacs = DicomWebPacs("http://127.0.0.1:9/dicom-web/?x=1", credentials)
    assert secret not in repr(credentials) and secret not in repr(pacs) and "ops" not in repr(pacs)
    assert pacs.public_url == "http://127.0.0.1:9/dicom-web" and secret not in str(pacs.described)
    with pytest.raises(PacsError, match="environment") as refused:
        DicomWebPacs(f"http://ops:{secret}@pacs/dicom-web")
    assert secret not in str(refused.value) and isinstance(refused.value, ClareError)


def test_the_dicom_part_of_a_multipart_answer_is_found():
    body = (b"--frontier\r\nContent-Type: application/dicom\r\n\r\n" + b"\0" * 128 + b"DICM rest"
            + b"\r\n--frontier--\r\n")
    part = _dicom_part('multipart/related; type="application/dicom"; boundary=frontier', body)
    assert part == b"\0" * 128 + b"DICM rest"
    assert _dicom_part("application/dicom", b"raw") == b"raw"
    with pytest.raises(PacsError) as wrong:
        _dicom_part("text/html", b"<html>login</html>")
    assert wrong.value.kind == "pacs_bad_answer"


def test_a_malformed_uid_never_reaches_a_url():
    pacs = DicomWebPacs("http://127.0.0.1:9/dicom-web")
    with pytest.raises(PacsError) as refused:
        pacs.retrieve(instance(sop_uid="../../studies"), 1000)
    assert refused.value.kind == "pacs_bad_answer"


def test_the_listener_reads_the_apis_answer_back_into_the_same_screening():
    """`listen --serve-url`: the API's JSON (made by the API's own encoder) becomes the Screening the
    in-process path makes, so the SR does not depend on where the model ran; the scan's own refusal
    (422) is that scan's failure; a wrong token, another model, another server or an API that is
    stopping keep the instance waiting, in words (tests/test_serve.py runs it on the real API)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from clare_dist.encode.api_json import api_answer
    from clare_dist.pacs.serve_client import screen_on_api
    from clare_dist.result import Screening, SimilarCase

    screened = Screening(scan_id="1.2.3", model_version="m-1", x=0.25, y=0.5, top3=["Pl", "CaPl", "No Finding"],
                         top3_distances=[0.01, 0.2, 0.3], combination="Pl", Ca=0, Pa=0, Pn=0, Pl=1, Ot=0,
                         explanation="because", similar_cases=[SimilarCase("c1", "Pl", 0.02)], ood_score=0.5,
                         needs_review=False)
    answers = {"/good/v1/predict": (200, api_answer(screened, "r1")),
               "/bad/v1/predict": (422, {"error": "truncated", "detail": "the scan is cut short", "request_id": "r2"}),
               "/token/v1/predict": (401, {"error": "unauthorized", "detail": "a bearer token is required"}),
               "/stopping/v1/predict": (503, {"error": "stopping", "detail": "the server is stopping"}),
               "/other/v1/predict": (200, ["not", "the", "api"]),
               "/partial/v1/predict": (200, {"model_version": "m-1", "decision": "Pl"})}

    class API(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the handler name http.server calls
            self.rfile.read(int(self.headers["Content-Length"]))
            code, body = answers[self.path]
            data = json.dumps(body).encode()
            self.send_response(code)
            if code == 503:
                self.send_header("Retry-After", "10")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), API)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert screen_on_api(f"{url}/good", b"dicom", "1.2.3", "m-1") == screened
        failed = screen_on_api(f"{url}/bad", b"dicom", "1.2.3", "m-1")
        assert (failed.status, failed.error_kind, failed.error_reason) == ("error", "truncated", "the scan is cut short")
        waits = {}
        for case, model in (("good", "m-2"), ("token", "m-1"), ("stopping", "m-1"), ("other", "m-1"), ("partial", "m-1")):
            with pytest.raises(PacsError) as waiting:
                screen_on_api(f"{url}/{case}", b"dicom", "1.2.3", model)
            waits[case] = (waiting.value.kind, waiting.value.message)
        assert waits["good"][0] == "pacs_refused" and "runs model m-1, the listener's bundle is m-2" in waits["good"][1]
        assert waits["token"][0] == "pacs_auth" and "HTTP 401 (unauthorized" in waits["token"][1]
        assert waits["stopping"][0] == "pacs_failed" and "(stopping: the server is stopping, Retry-After 10 s)" in waits["stopping"][1]
        assert waits["other"][0] == "pacs_bad_answer" and "is --serve-url a clare-dist serve?" in waits["other"][1]
        assert waits["partial"][0] == "pacs_bad_answer" and "without a screening" in waits["partial"][1]
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(PacsError) as down:
        screen_on_api(url, b"dicom", "1.2.3", "m-1")
    assert down.value.kind == "pacs_unreachable"


def test_a_multipart_answer_cut_short_is_a_bad_answer():
    body = b"--frontier\r\nContent-Type: application/dicom\r\n\r\n" + b"\0" * 128 + b"DICM cut"
    with pytest.raises(PacsError) as cut:
        _dicom_part('multipart/related; type="application/dicom"; boundary="frontier"', body)
    assert cut.value.kind == "pacs_bad_answer"


def test_embed_from_a_pacs_refuses_the_scan_cache_and_a_folder_refuses_store_results(tmp_path, capsys, monkeypatch):
    from clare_dist.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    base = ["embed", "--bundle", str(tmp_path), "--out", str(tmp_path / "out")]
    assert main([*base, "--dicomweb", "http://127.0.0.1:1/dicom-web", "--scan-cache", str(tmp_path / "c")]) == 2
    assert "--scan-cache keeps the scans of a folder archive" in capsys.readouterr().err
    assert main([*base, "--archive", str(tmp_path), "--store-results"]) == 2
    assert "--store-results needs a PACS" in capsys.readouterr().err
