"""The PACS clients against a real Orthanc (Debian's), in the session's loopback-only network:
DICOMweb and DIMSE listing, retrieval in the stored syntax, the per-instance rows of a batch,
results stored and confirmed without duplicates, clear errors for wrong credentials and a PACS
that is not there, and the listener screening what a modality sends, across a kill."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pydicom
import pytest
import requests
from orthanc import PASSWORD, USER, free_port
from pacs_files import dx_instance, night_of_studies

from clare_dist.bundle import load_bundle
from clare_dist.pacs.credentials import Credentials
from clare_dist.pacs.dicomweb import DicomWebPacs
from clare_dist.pacs.dimse import DimsePacs
from clare_dist.pacs.errors import PacsError
from clare_dist.pacs.selection import Selection
from clare_dist.pacs.stages import fetch_decode_batch, instances_table, store_results
from clare_dist.result import Screening
from clare_dist.scans import ScanConfig
from clare_dist.screening import Screener

NIGHT = 10  # frontal chest images, plus a lateral and a skull


@pytest.fixture(scope="module")
def night(orthanc):
    files = night_of_studies(7000, NIGHT)
    for data in files.values():
        orthanc.upload(data)
    return files


@pytest.fixture(scope="module")
def web(orthanc):
    return DicomWebPacs(orthanc.dicomweb, Credentials(USER, PASSWORD), page_size=4, retries=3, backoff_s=0.2)


@pytest.fixture(scope="module")
def dimse(orthanc):
    return DimsePacs("127.0.0.1", orthanc.dicom_port, orthanc.aet, "CLARETEST", timeout_s=10, retries=2, backoff_s=0.2)


def listed(pacs, uids) -> list:
    return [i for i in pacs.query(Selection()) if i.sop_uid in uids]


@pytest.mark.parametrize("protocol", ["web", "dimse"])
def test_every_instance_is_listed_once_and_retrieved_as_stored(protocol, night, request):
    pacs = request.getfixturevalue(protocol)
    found = listed(pacs, night)  # page_size 4: the DICOMweb listing takes several pages
    assert sorted(i.sop_uid for i in found) == sorted(night)
    views = {i.sop_uid: i.view for i in found}
    assert sorted(v for v in views.values()) == sorted(pydicom.dcmread(io.BytesIO(f)).ViewPosition for f in night.values())
    picked = found[:5]
    got = pacs.retrieve_many(picked, 10**8) if protocol == "dimse" else [pacs.retrieve(i, 10**8) for i in picked]
    for instance, data in zip(picked, got):
        original = pydicom.dcmread(io.BytesIO(night[instance.sop_uid]))
        back = pydicom.dcmread(io.BytesIO(data))
        assert back.SOPInstanceUID == instance.sop_uid
        assert back.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID  # never transcoded
        assert np.array_equal(back.pixel_array, original.pixel_array)


def test_a_batch_gives_one_row_per_instance_skipping_the_lateral_and_the_skull(web, night, orthanc):
    table = instances_table(listed(web, night))
    batch = {name: table[name].to_numpy(dtype=object) for name in table.columns}
    rows = fetch_decode_batch(batch, web, Selection(), ScanConfig(size=48), keep_source=False)
    status = dict(zip(rows["scan_id"], rows["status"]))
    kinds = dict(zip(rows["scan_id"], rows["error_kind"]))
    assert len(status) == NIGHT + 2
    assert sorted(kinds[uid] for uid, s in status.items() if s == "skipped") == ["not_chest", "not_frontal"]
    assert sum(s == "ok" for s in status.values()) == NIGHT
    assert all(rows["scan"][i].std() > 0 for i, s in enumerate(rows["status"]) if s == "ok")


def test_an_instance_deleted_after_the_query_is_a_row_with_its_reason(web, orthanc):
    data = dx_instance(7500)
    orthanc.upload(data)
    uid = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
    (instance,) = listed(web, {uid})
    (orthanc_id,) = requests.post(f"{orthanc.url}/tools/lookup", data=uid, auth=(USER, PASSWORD), timeout=10).json()
    requests.delete(f"{orthanc.url}/instances/{orthanc_id['ID']}", auth=(USER, PASSWORD), timeout=10).raise_for_status()
    table = instances_table([instance])
    rows = fetch_decode_batch({c: table[c].to_numpy(dtype=object) for c in table}, web, Selection(), ScanConfig(size=48), False)
    assert list(rows["status"]) == ["error"] and list(rows["error_kind"]) == ["pacs_not_found"]


def test_wrong_credentials_are_refused_in_words_without_the_secret(orthanc):
    secret = "definitely-wrong-password"
    with pytest.raises(PacsError) as refused:
        DicomWebPacs(orthanc.dicomweb, Credentials(USER, secret), retries=1).check()
    assert refused.value.kind == "pacs_auth" and "401" in str(refused.value) and secret not in str(refused.value)
    with pytest.raises(PacsError) as anonymous:
        DicomWebPacs(orthanc.dicomweb, retries=1).check()
    assert anonymous.value.kind == "pacs_auth" and "CLARE_PACS_USER" in str(anonymous.value)


def test_a_pacs_that_is_not_there_is_named_after_the_retries():
    port = free_port()
    start = time.monotonic()
    with pytest.raises(PacsError) as web_down:
        DicomWebPacs(f"http://127.0.0.1:{port}/dicom-web", retries=2, backoff_s=0.1).check()
    with pytest.raises(PacsError) as dimse_down:
        DimsePacs("127.0.0.1", port, "NOBODY", retries=2, backoff_s=0.1).check()
    assert web_down.value.kind == dimse_down.value.kind == "pacs_unreachable"
    assert f"127.0.0.1:{port}" in str(web_down.value) and f"127.0.0.1:{port}" in str(dimse_down.value)
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("protocol", ["web", "dimse"])
def test_results_are_stored_in_the_study_confirmed_and_never_duplicated(protocol, request, orthanc, tiny_bundle):
    pacs = request.getfixturevalue(protocol)
    data = dx_instance(7600 + (protocol == "dimse"))
    orthanc.upload(data)
    study = str(pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID)
    bundle = load_bundle(tiny_bundle)
    screening = Screener(bundle, threads=1).screen([data], ["scan"])[0]
    for _ in range(2):  # a rerun stores the same UIDs again
        assert store_results([screening], [data], bundle, None, pacs, ScanConfig()) == ["confirmed"]
    kept = orthanc.instances_of_study(study)
    assert sorted(i["Modality"] for i in kept) == ["DX", "OT", "SR"]
    assert len({i["SOPInstanceUID"] for i in kept}) == 3


def test_a_failed_screening_has_nothing_to_store(web, tiny_bundle):
    failed = Screening.failed("scan", "truncated", "cut short", "m")
    assert store_results([failed], [b"x"], load_bundle(tiny_bundle), None, web, ScanConfig()) == [None]


def _listener(tiny_bundle, spool, port, orthanc):
    env = {**os.environ, "CLARE_PACS_USER": USER, "CLARE_PACS_PASSWORD": PASSWORD}
    return subprocess.Popen([sys.executable, "-m", "clare_dist", "listen", "--bundle", str(tiny_bundle), "--aet", "CLARE",
                             "--port", str(port), "--spool", str(spool), "--store-results-to", orthanc.dicomweb],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_listening(process, port):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()[-3000:]
        if subprocess.run(["echoscu", "-aec", "CLARE", "127.0.0.1", str(port)], capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError("the listener did not answer C-ECHO within 120 s")


def _states(spool) -> dict[str, str]:
    with sqlite3.connect(spool / "listener.sqlite") as db:
        return dict(db.execute("SELECT sop_uid, state FROM instances").fetchall())


def test_the_listener_screens_what_a_modality_sends_and_a_kill_loses_nothing(tiny_bundle, orthanc, tmp_path):
    files = night_of_studies(8000, 4)
    folder = tmp_path / "sent"
    folder.mkdir()
    for uid, data in files.items():
        (folder / f"{uid}.dcm").write_bytes(data)
    port, spool = free_port(), tmp_path / "spool"
    first = _listener(tiny_bundle, spool, port, orthanc)
    _wait_listening(first, port)
    sent = subprocess.run(["storescu", "--required", "-aec", "CLARE", "127.0.0.1", str(port), *map(str, sorted(folder.iterdir()))],
                          capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0 and "E:" not in sent.stderr, sent.stderr  # every C-STORE answered with success at once
    os.killpg(first.pid, signal.SIGKILL)  # as an OOM killer would, whatever it was doing
    first.wait()
    assert set(_states(spool)) == set(files)  # each received instance has its row before the sender was answered

    second = _listener(tiny_bundle, spool, port, orthanc)
    try:
        _wait_listening(second, port)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and set(_states(spool).values()) & {"received", "screened"}:
            time.sleep(0.5)
        states = _states(spool)
    finally:
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out[-3000:]
    assert sorted(states.values()) == ["skipped", "skipped", "stored", "stored", "stored", "stored"], states
    for uid, data in files.items():
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        kept = orthanc.instances_of_study(str(ds.StudyInstanceUID))
        expected = ["SR", "OT"] if states[uid] == "stored" else []
        assert sorted(i["Modality"] for i in kept if i["Modality"] != "DX") == sorted(expected)
    assert not list((spool / "incoming").iterdir())  # nothing left behind once the results are confirmed
