"""The archive embedding job on Ray Data: one row per input, bad scans recorded, resumable."""

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from scan_files import dicom_bytes, gradient, png_bytes, png_with_header_size

from clare_dist.batch import list_archive, read_results
from clare_dist.encode.parquet_row import ROW_COLUMNS
from clare_dist.bundle import load_bundle
from clare_dist.labels import CLASSES, combination_name
from clare_dist.result_files import ResultFolders
from clare_dist.synth import encode_dx

from conftest import connect_ray

# file name → expected status ("ok") or the error kind
BAD_FILES = {
    "empty.png": "empty",
    "truncated.png": "truncated",
    "notes.png": "not_an_image",
    "huge.png": "too_many_pixels",
    "no_pixels.dcm": "no_pixel_data",
    "page.jpg": "not_an_image",
    "random.dcm": "not_an_image",
    "truncated.jpg": "truncated",
    "bundle.png": "not_an_image",
    "cut_pixels.dcm": "truncated",
}


@pytest.fixture(scope="module")
def mixed_archive(tiny_archive, tmp_path_factory):
    """Good PNGs in the NIH layout, DICOMs and odd-but-valid files, and ten kinds of bad file."""
    root = tmp_path_factory.mktemp("backlog")
    nested = root / "images_001" / "images"
    nested.mkdir(parents=True)
    for png in sorted((tiny_archive / "archive" / "images").glob("*.png"))[:24]:
        shutil.copy(png, nested / png.name)
    odd = root / "odd"
    odd.mkdir()
    picture = gradient(96, 96)
    (odd / "rgba.png").write_bytes(png_bytes(Image.fromarray(picture).convert("RGBA")))
    (odd / "sixteen_bit.png").write_bytes(png_bytes(Image.fromarray((picture.astype(np.uint16) * 200))))
    jpeg = io.BytesIO()
    Image.fromarray(picture).save(jpeg, "JPEG")
    (odd / "scan.jpg").write_bytes(jpeg.getvalue())
    (odd / "png_named.dcm").write_bytes(png_bytes(Image.fromarray(picture)))
    stored = (picture.astype(np.uint16) * 16)
    (odd / "mono1.dcm").write_bytes(dicom_bytes(stored, bits_stored=12, photometric="MONOCHROME1"))
    (odd / "DICOM0001").write_bytes(encode_dx(stored, 12))  # a complete DX, as a modality writes it

    bad = root / "bad"
    bad.mkdir()
    whole_png = png_bytes(Image.fromarray(picture))
    (bad / "empty.png").write_bytes(b"")
    (bad / "truncated.png").write_bytes(whole_png[: len(whole_png) // 2])
    (bad / "notes.png").write_text("patient list: see the other file\n")
    (bad / "huge.png").write_bytes(png_with_header_size(60000, 60000))
    (bad / "no_pixels.dcm").write_bytes(dicom_bytes(None))
    (bad / "page.jpg").write_text("<html><body>login</body></html>")
    (bad / "random.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    (bad / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("a.txt", "x")
    (bad / "bundle.png").write_bytes(zipped.getvalue())
    whole_dicom = dicom_bytes(stored)
    (bad / "cut_pixels.dcm").write_bytes(whole_dicom[: len(whole_dicom) - 4000])
    (root / ".DS_Store").write_bytes(b"\0")
    return root


@pytest.fixture(scope="module")
def ray_session(ray_address):
    return connect_ray(ray_address)


def test_every_input_gives_one_row_with_the_right_status(mixed_archive, tiny_bundle, ray_session, tmp_path):
    from jobs.embed import EmbedSettings, run_embed

    inputs = list_archive(mixed_archive)
    assert len(inputs) == 24 + 6 + len(BAD_FILES)  # hidden files are not scans
    folders = ResultFolders(dicom=tmp_path / "pacs", fhir=tmp_path / "ehr")
    settings = EmbedSettings(batch_size=8, task_cpus=0.25, results=folders)
    results = run_embed(tiny_bundle, mixed_archive, tmp_path, settings)
    assert list(results.columns) == list(ROW_COLUMNS)
    assert sorted(results["scan_id"]) == sorted(s.scan_id for s in inputs)
    by_name = results.assign(name=results["scan_id"].str.rsplit("/", n=1).str[-1]).set_index("name")
    for name, kind in BAD_FILES.items():
        assert by_name.loc[name, "status"] == "error", name
        assert by_name.loc[name, "error"].startswith(f"{kind}: "), (name, by_name.loc[name, "error"])
        assert pd.isna(by_name.loc[name, "x"]) and pd.isna(by_name.loc[name, "combination"])
    ok = results[results["status"] == "ok"]
    assert len(ok) == 30
    assert ok["error"].isna().all() and np.isfinite(ok[["x", "y"]].to_numpy()).all()
    for _, row in ok.iterrows():
        assert combination_name([row[c] for c in CLASSES]) == row["combination"]
    assert all(len(t) == 3 for t in ok["top3"]) and ok["explanation"].str.startswith("This scan is").all()
    assert (results["model_version"] == load_bundle(tiny_bundle).model_version).all()

    page = (tmp_path / "report.html").read_text()
    assert all(f"{name}" in page for name in BAD_FILES)
    order = pd.read_csv(tmp_path / "worklist.csv")  # every scan in reading order, failed ones last
    assert len(order) == len(results) and order["rank"].tolist() == list(range(1, len(results) + 1))
    screened = order[order["status"] == "ok"]
    assert len(screened) == 30 and screened["rank"].tolist() == list(range(1, 31))
    ranked = screened[screened["needs_review"].astype(str) != "True"]  # flagged scans follow the ranked ones
    assert ranked["triage_score"].notna().all() and ranked["triage_score"].is_monotonic_decreasing
    assert screened["triage_score"].isna().tolist() == [False] * len(ranked) + [True] * (30 - len(ranked))
    assert order["status"].iloc[30:].eq("error").all() and 'id="worklist"' in page

    # The hospital's files: an SR and a Secondary Capture in the study of the one complete DX (the
    # minimal mono1.dcm lacks the study module an SR must copy: a note, no file), a FHIR Bundle per scan.
    source = pydicom.dcmread(mixed_archive / "odd" / "DICOM0001")
    written = sorted(folders.dicom.iterdir())
    assert len(written) == 2 and {pydicom.dcmread(p).StudyInstanceUID for p in written} == {source.StudyInstanceUID}
    assert {pydicom.dcmread(p).Modality for p in written} == {"SR", "OT"}
    assert len(list(folders.fhir.glob("*.json"))) == 30

    again = run_embed(tiny_bundle, mixed_archive, tmp_path, settings)
    assert len(again) == len(results)  # nothing left to do, nothing written twice
    assert sorted(folders.dicom.iterdir()) == written


def test_fused_and_staged_pipelines_write_the_same_rows(mixed_archive, tiny_bundle, ray_session, tmp_path):
    from jobs.embed import EmbedSettings, run_embed

    fused = run_embed(tiny_bundle, mixed_archive, tmp_path / "fused", EmbedSettings(batch_size=8, pipeline="fused"))
    staged = run_embed(tiny_bundle, mixed_archive, tmp_path / "staged",
                       EmbedSettings(batch_size=8, task_cpus=0.25, pipeline="staged"))
    assert len(fused) == len(list_archive(mixed_archive)) and (fused["status"] == "ok").sum() == 30
    pd.testing.assert_frame_equal(fused, staged)


def test_a_rerun_with_the_scan_cache_reads_the_kept_scans_instead_of_decoding(tiny_archive, tiny_bundle, ray_session,
                                                                             tmp_path):
    from clare_dist.scan_cache import ScanCache
    from jobs.embed import EmbedSettings, run_embed

    archive = tmp_path / "scans"
    archive.mkdir()
    for png in sorted((tiny_archive / "archive" / "images").glob("*.png"))[:12]:
        shutil.copy(png, archive / png.name)
    (archive / "empty.png").write_bytes(b"")
    settings = EmbedSettings(batch_size=4, scan_cache=tmp_path / "cache")
    first = run_embed(tiny_bundle, archive, tmp_path / "first", settings)
    limits = load_bundle(tiny_bundle).scan_config(settings.limits)
    cache = ScanCache(tmp_path / "cache")
    assert cache.entries(limits) == 12  # the failed scan is not kept
    plain = run_embed(tiny_bundle, archive, tmp_path / "plain", EmbedSettings(batch_size=4))
    pd.testing.assert_frame_equal(first, plain)

    # One entry replaced by the scan flipped upside down: a rerun that reads the cache screens
    # that array (a different point), every other scan as before.
    scan = archive / sorted(p.name for p in archive.glob("0*.png"))[0]
    entry = cache.entry(scan.read_bytes(), limits)
    np.save(entry, np.ascontiguousarray(np.load(entry)[::-1]))
    again = run_embed(tiny_bundle, archive, tmp_path / "again", settings).set_index("scan_id")
    before = first.set_index("scan_id")
    assert not np.allclose(again.loc[scan.name, ["x", "y"]].astype(float), before.loc[scan.name, ["x", "y"]].astype(float))
    others = before.index.drop(scan.name)
    pd.testing.assert_frame_equal(again.loc[others], before.loc[others])


def test_the_pipeline_is_staged_only_where_an_actor_must_hold_a_gpu_or_a_pacs_limits_retrieval(tmp_path):
    from jobs.embed import EmbedSettings, PacsSource, pipeline_for

    pacs = PacsSource(pacs=None, selection=None)
    assert pipeline_for(EmbedSettings(), tmp_path, use_gpu=False) == "fused"
    assert pipeline_for(EmbedSettings(), tmp_path, use_gpu=True) == "staged"
    assert pipeline_for(EmbedSettings(), pacs, use_gpu=False) == "staged"
    assert pipeline_for(EmbedSettings(pipeline="fused"), pacs, use_gpu=True) == "fused"
    assert pipeline_for(EmbedSettings(pipeline="staged"), tmp_path, use_gpu=False) == "staged"
    with pytest.raises(ValueError, match="auto, fused or staged"):
        pipeline_for(EmbedSettings(pipeline="fast"), tmp_path, use_gpu=False)


def _embed_command(bundle, archive, out, address):
    return [sys.executable, "-m", "clare_dist", "embed", "--bundle", str(bundle), "--archive", str(archive),
            "--out", str(out), "--batch-size", "4", "--address", address]


def test_a_killed_run_resumed_equals_an_uninterrupted_one(tiny_archive, tiny_bundle, ray_address, tmp_path):
    archive = tiny_archive / "archive" / "images"
    whole = tmp_path / "whole"
    done = subprocess.run(_embed_command(tiny_bundle, archive, whole, ray_address), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    cut = tmp_path / "cut"
    first = subprocess.Popen(_embed_command(tiny_bundle, archive, cut, ray_address), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((cut / "results").glob("*.parquet")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    partial = len(read_results(cut)) if (cut / "results").exists() else 0
    assert 0 < partial < 160, "the run must be cut off before the end for this test to mean anything"

    resumed = subprocess.run(_embed_command(tiny_bundle, archive, cut, ray_address), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = read_results(whole), read_results(cut)
    assert len(got) == 160 and got["scan_id"].is_unique
    pd.testing.assert_frame_equal(got.drop(columns=["x", "y", "top3_distances"]),
                                  expected.drop(columns=["x", "y", "top3_distances"]))
    assert np.allclose(got[["x", "y"]].to_numpy(), expected[["x", "y"]].to_numpy(), atol=1e-6)


def test_regressor_actors_leave_cpus_for_decoding():
    from jobs.embed import EmbedSettings, fitting_actor_cpus

    two = EmbedSettings(workers=2, actor_cpus=1.0, task_cpus=0.5)
    assert fitting_actor_cpus(two, 8) == 1.0
    assert fitting_actor_cpus(two, 2) == pytest.approx(0.5)  # 2 x 0.5 + 2 x 0.5 = the 2 CPUs
    assert fitting_actor_cpus(two, 0) == 1.0  # autoscaling from zero: the autoscaler adds nodes
    with pytest.raises(ValueError, match="use fewer --workers"):
        fitting_actor_cpus(EmbedSettings(workers=8, task_cpus=0.5), 1.5)


@pytest.mark.timeout(600)
def test_hostile_files_cost_one_row_each_and_a_fifo_does_not_stop_the_job(tiny_archive, tiny_bundle, ray_session, tmp_path):
    """The hostile corpus (tests/hostile_files.py) and what only a file system holds (FIFOs, a
    socket, link loops, awkward names), mixed into good scans: the job finishes, every input is
    one row with its outcome, and a rerun adds none."""
    from hostile_files import corpus, scan_png, write_special_files

    from jobs.embed import EmbedSettings, run_embed

    archive = tmp_path / "archive"
    good = sorted((tiny_archive / "archive" / "images").glob("*.png"))[:8]
    expected = {}
    for png in good:
        (archive / "good").mkdir(parents=True, exist_ok=True)
        shutil.copy(png, archive / "good" / png.name)
        expected[f"good/{png.name}"] = "ok"
    for entry in corpus():
        (archive / "corpus").mkdir(exist_ok=True)
        (archive / "corpus" / entry.name).write_bytes(entry.data)
        expected[f"corpus/{entry.name}"] = entry.outcome
    special = write_special_files(archive / "special", scan_png())
    expected |= {f"special/{name}": kind for name, kind in special.items()}

    out = tmp_path / "out"
    results = run_embed(tiny_bundle, archive, out, EmbedSettings(batch_size=8, task_cpus=0.25))
    assert results["scan_id"].is_unique and sorted(results["scan_id"]) == sorted(expected)
    got = {row.scan_id: "ok" if row.status == "ok" else row.error.split(": ", 1)[0] for row in results.itertuples()}
    assert got == expected
    assert results.loc[results["status"] == "error", "error"].str.len().gt(20).all()  # a reason, not only a kind
    again = run_embed(tiny_bundle, archive, out, EmbedSettings(batch_size=8, task_cpus=0.25))
    assert len(again) == len(results) == len(read_results(out))
