"""The archive job with a PACS as its archive, on the session's Ray cluster and a real Orthanc:
one row per listed instance through DICOMweb and through DIMSE, the results stored back into each
study and confirmed, nothing duplicated by a rerun, a kill resumed to the same rows, an Orthanc
restart mid-run outlasted, and a clear error for wrong credentials or a PACS that is not there."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pydicom
import pytest
from orthanc import PASSWORD, USER, free_port
from pacs_files import night_of_studies

from clare_dist.batch import read_results
from clare_dist.cli import main


def studies(files) -> set[str]:
    return {str(pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).StudyInstanceUID) for f in files.values()}


def upload(orthanc, files):
    for data in files.values():
        orthanc.upload(data)
    return files


def derived(orthanc, files) -> list[str]:
    """The modalities of what clare-dist stored in these studies (its SRs and Secondary Captures)."""
    return sorted(i["Modality"] for s in studies(files) for i in orthanc.instances_of_study(s) if i["Modality"] != "DX")


def embed_args(tiny_bundle, out, ray_address, *source):
    return ["embed", "--bundle", str(tiny_bundle), "--out", str(out), "--address", ray_address, "--batch-size", "4",
            "--k", "3", *source]


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("CLARE_PACS_USER", USER)
    monkeypatch.setenv("CLARE_PACS_PASSWORD", PASSWORD)


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_a_night_through_the_pacs_one_row_each_results_back_and_no_duplicates(protocol, orthanc, tiny_bundle, ray_address,
                                                                             credentials, tmp_path):
    day = {"dicomweb": "20261201", "dimse": "20261202"}[protocol]
    files = upload(orthanc, night_of_studies(9000 + 100 * (protocol == "dimse"), 6, study_date=day))
    source = (["--dicomweb", orthanc.dicomweb] if protocol == "dicomweb" else
              ["--dimse", orthanc.dimse, "--called-aet", orthanc.aet, "--calling-aet", "CLARETEST"])
    args = embed_args(tiny_bundle, tmp_path / "out", ray_address, *source, "--study-date", day, "--store-results")
    assert main(args) == 0
    rows = read_results(tmp_path / "out")
    assert sorted(rows["scan_id"]) == sorted(files)  # the scan id is the SOP Instance UID, one row each
    assert sorted(rows["status"]) == ["ok"] * 6 + ["skipped"] * 2
    assert sorted(rows.loc[rows["status"] == "skipped", "error"].str.split(":").str[0]) == ["not_chest", "not_frontal"]
    assert list(rows.loc[rows["status"] == "ok", "results_stored"]) == ["confirmed"] * 6
    assert rows.loc[rows["status"] == "skipped", "results_stored"].isna().all()
    assert derived(orthanc, files) == ["OT"] * 6 + ["SR"] * 6
    assert (tmp_path / "out" / "pacs" / "instances.parquet").exists()

    assert main([*args[:4], str(tmp_path / "again"), *args[5:]]) == 0  # a second run into a new folder
    assert derived(orthanc, files) == ["OT"] * 6 + ["SR"] * 6  # replaced, not duplicated: the UIDs are derived
    again = read_results(tmp_path / "again")
    assert list(again.sort_values("scan_id")["combination"]) == list(rows.sort_values("scan_id")["combination"])


def _embed(tiny_bundle, out, ray_address, orthanc, day):
    env = {**os.environ, "CLARE_PACS_USER": USER, "CLARE_PACS_PASSWORD": PASSWORD}
    command = [sys.executable, "-m", "clare_dist", *embed_args(tiny_bundle, out, ray_address, "--dicomweb", orthanc.dicomweb,
                                                                "--study-date", day, "--store-results")]
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _first_part(process, out):
    deadline = time.monotonic() + 300
    while not list((out / "results").glob("*.parquet")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_killed_run_resumes_to_the_same_rows_and_an_orthanc_restart_is_outlasted(orthanc, tiny_bundle, ray_address, tmp_path):
    day = "20261203"
    files = upload(orthanc, night_of_studies(9500, 38, study_date=day))
    out = tmp_path / "out"
    first = _embed(tiny_bundle, out, ray_address, orthanc, day)
    _first_part(first, out)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    partial = len(read_results(out))
    assert 0 < partial < len(files), "the run must be cut off before its end for this test to mean anything"

    resumed = _embed(tiny_bundle, out, ray_address, orthanc, day)
    _first_part(resumed, out)
    orthanc.restart()  # the PACS goes away for a moment while the resumed run retrieves and stores
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    rows = read_results(out)
    assert sorted(rows["scan_id"]) == sorted(files) and rows["scan_id"].is_unique
    assert (rows["status"] == "ok").sum() == 38 and set(rows.loc[rows["status"] == "ok", "results_stored"]) == {"confirmed"}
    assert derived(orthanc, files) == ["OT"] * 38 + ["SR"] * 38


ONLY_SCANS = "function ReceivedInstanceFilter(dicom, origin, info)\n  return dicom.Modality == 'DX'\nend\n"


def test_results_the_pacs_did_not_keep_are_delivered_again_by_a_rerun(orthanc, tiny_bundle, ray_address, credentials,
                                                                      tmp_path):
    """A PACS that drops every result (a Lua filter in Orthanc) leaves rows that say so; a rerun
    into the same folder once it accepts them delivers them, confirmed, without screening again
    or duplicating anything; a third run has nothing left to deliver."""
    day = "20261204"
    files = upload(orthanc, night_of_studies(9800, 3, study_date=day))
    args = embed_args(tiny_bundle, tmp_path / "out", ray_address, "--dicomweb", orthanc.dicomweb, "--study-date", day,
                      "--store-results")
    orthanc.lua = ONLY_SCANS
    orthanc.restart()
    try:
        assert main(args) == 0
    finally:
        orthanc.lua = None
        orthanc.restart()
    first = read_results(tmp_path / "out")
    screened = first["status"] == "ok"
    # Orthanc 1.10 answers the STOW with success and drops what its filter refuses: only the query back tells
    assert screened.sum() == 3 and first.loc[screened, "results_stored"].str.startswith("stored, not confirmed").all()
    assert derived(orthanc, files) == []

    assert main(args) == 0
    again = read_results(tmp_path / "out")
    assert list(again.loc[screened, "results_stored"]) == ["confirmed"] * 3
    assert again.drop(columns="results_stored").equals(first.drop(columns="results_stored"))  # not screened again
    assert again.loc[~screened, "results_stored"].isna().all()
    assert derived(orthanc, files) == ["OT"] * 3 + ["SR"] * 3
    deliveries = sorted((tmp_path / "out" / "deliveries").glob("*.parquet"))
    assert len(deliveries) == 1

    assert main(args) == 0  # nothing left to deliver: no new delivery, nothing duplicated
    assert sorted((tmp_path / "out" / "deliveries").glob("*.parquet")) == deliveries
    assert derived(orthanc, files) == ["OT"] * 3 + ["SR"] * 3


def test_wrong_credentials_or_no_pacs_stop_the_job_in_words_before_any_work(orthanc, tiny_bundle, ray_address, monkeypatch,
                                                                           tmp_path, capsys):
    monkeypatch.setenv("CLARE_PACS_USER", USER)
    monkeypatch.setenv("CLARE_PACS_PASSWORD", "wrong-password")
    assert main(embed_args(tiny_bundle, tmp_path / "a", ray_address, "--dicomweb", orthanc.dicomweb)) == 2
    error = capsys.readouterr().err
    assert "refused" in error and "401" in error and "wrong-password" not in error
    assert main(embed_args(tiny_bundle, tmp_path / "b", ray_address, "--dimse", f"127.0.0.1:{free_port()}",
                           "--called-aet", "NOBODY")) == 2
    assert "cannot reach the PACS" in capsys.readouterr().err
    assert not (tmp_path / "a" / "results").exists() and not (tmp_path / "b" / "results").exists()
