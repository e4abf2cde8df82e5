"""`clare-dist predict --dicom-out --fhir-out`: the files a PACS and an EHR take, for DICOM and PNG scans."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from clare_dist.bundle import load_bundle
from clare_dist.cli import main
from clare_dist.encode.dicom_sr import sr_findings
from clare_dist.encode.fhir import bundle_decision
from clare_dist.encode.identity import algorithm_of
from clare_dist.result import Screening
from clare_dist.result_files import ResultFolders, write_result_files
from clare_dist.synth import encode_dx
from dicom_tools import dciodvfy
from scan_files import dicom_bytes


def dx(seed: int, syntax: str) -> bytes:
    rows = np.linspace(0, 4095, 128)[:, None]
    noise = np.random.default_rng(seed).integers(0, 300, (128, 128))
    return encode_dx(np.clip(rows + noise, 0, 4095).astype(np.uint16), 12, transfer_syntax=syntax)


@pytest.fixture(scope="module")
def scans(tmp_path_factory, tiny_archive):
    folder = tmp_path_factory.mktemp("scans")
    for name, syntax in (("plain.dcm", "explicit"), ("lossless.dcm", "jpeg-ls")):
        (folder / name).write_bytes(dx(len(name), syntax))
    png = sorted((tiny_archive / "archive" / "images").glob("*.png"))[0]
    (folder / "nih.png").write_bytes(png.read_bytes())
    return [folder / "plain.dcm", folder / "lossless.dcm", folder / "nih.png"]


def predict(scans, bundle, out, capsys) -> tuple[list[dict], str]:
    capsys.readouterr()
    assert main(["predict", *map(str, scans), "--bundle", str(bundle), "--json",
                 "--dicom-out", str(out / "pacs"), "--fhir-out", str(out / "ehr")]) == 0
    captured = capsys.readouterr()
    return [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_each_dicom_scan_gets_its_sr_and_sc_in_its_study_and_each_scan_a_fhir_bundle(scans, tiny_bundle, tmp_path, capsys):
    answers, err = predict(scans, tiny_bundle, tmp_path, capsys)
    sources = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in scans[:2]}
    written = {p.name: pydicom.dcmread(p) for p in sorted((tmp_path / "pacs").iterdir())}
    assert sorted(ds.Modality for ds in written.values()) == ["OT", "OT", "SR", "SR"]
    for name, ds in written.items():
        assert name == f"{ds.SOPInstanceUID}.dcm" and dciodvfy(tmp_path / "pacs" / name)[0] == []
        (source,) = [s for s in sources.values() if s.StudyInstanceUID == ds.StudyInstanceUID]
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.PatientID == source.PatientID
    for answer, scan in zip(answers[:2], scans[:2]):  # the SR says what --json says, for that scan's image
        source = pydicom.dcmread(scan)
        (sr,) = [ds for ds in written.values() if ds.Modality == "SR" and ds.StudyInstanceUID == source.StudyInstanceUID]
        assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
            .ReferencedSOPInstanceUID == source.SOPInstanceUID
        findings = sr_findings(sr)
        assert findings["decision"] == answer["combination"] and findings["explanation"] == answer["explanation"]
        assert findings["classes"] == {c: answer[c] for c in ("Ca", "Pa", "Pn", "Pl", "Ot")}
    bundles = [json.loads(p.read_text()) for p in sorted((tmp_path / "ehr").glob("*.json"))]
    assert len(bundles) == 3
    assert sorted(bundle_decision(b)["decision"] for b in bundles) == sorted(a["combination"] for a in answers)
    assert "nih.png: not a DICOM scan, so it belongs to no study" in err
    assert "nih.png" not in "".join(p.name for p in (tmp_path / "ehr").iterdir())  # files named by id, never by scan


def test_a_rerun_rewrites_the_same_files(scans, tiny_bundle, tmp_path, capsys):
    predict(scans, tiny_bundle, tmp_path, capsys)
    first = {p.name: p.read_bytes() for p in (tmp_path / "ehr").iterdir()}
    names = sorted(p.name for p in (tmp_path / "pacs").iterdir())
    predict(scans, tiny_bundle, tmp_path, capsys)
    assert sorted(p.name for p in (tmp_path / "pacs").iterdir()) == names
    assert {p.name: p.read_bytes() for p in (tmp_path / "ehr").iterdir()} == first  # FHIR carries no timestamp


def test_a_source_lacking_its_study_module_costs_its_own_results_only(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    minimal = tmp_path / "minimal.dcm"
    minimal.write_bytes(dicom_bytes(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16, bits_stored=12))
    screening = Screening(scan_id="minimal.dcm", model_version=bundle.model_version, x=0.1, y=0.2, top3=["Ca", "Pa", "Pn"],
                          top3_distances=[0.1, 0.2, 0.3], combination="Ca", Ca=1, Pa=0, Pn=0, Pl=0, Ot=0, explanation="Ca.")
    files = write_result_files(screening, minimal, algorithm_of(bundle), ResultFolders(tmp_path / "pacs", tmp_path / "ehr"))
    assert files.note.startswith("results not written: ") and "Study" in files.note  # no SR or SC: no study to put them in
    assert [p.parent.name for p in files.paths] == ["ehr"] and not (tmp_path / "pacs").exists()  # the FHIR Bundle still goes
    failed = Screening.failed("broken.png", "truncated", "cut short", bundle.model_version)
    assert write_result_files(failed, minimal, algorithm_of(bundle), ResultFolders(tmp_path / "pacs")).paths == []


def test_the_readme_table_of_codes_is_the_one_the_encoders_use():
    from pathlib import Path

    from clare_dist.encode.codes import CLASS_CONCEPTS, CLASS_MEMBERS, FINDING_SITES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for code, concept in CLASS_CONCEPTS.items():
        site = FINDING_SITES[code]
        row = (f'| {code} | {CLASS_MEMBERS[code]} | {concept.scheme} {concept.value} "{concept.meaning}" | '
               f'SCT {site.value} "{site.meaning}" |')
        assert row in readme, row


def test_a_source_value_dicom_does_not_allow_is_refused_by_name_never_by_value(tiny_bundle, tmp_path, caplog):
    import io
    import logging

    bundle = load_bundle(tiny_bundle)
    source = tmp_path / "odd.dcm"
    ds = pydicom.dcmread(io.BytesIO(dx(5, "explicit")))
    ds.PatientSex, ds.StudyDate = "secret-sex", "secret-date"  # a CS in lower case, a DA that is no date
    ds.save_as(source, enforce_file_format=True)
    screening = Screening(scan_id="odd.dcm", model_version=bundle.model_version, x=0.1, y=0.2, top3=["Ca", "Pa", "Pn"],
                          top3_distances=[0.1, 0.2, 0.3], combination="Ca", Ca=1, Pa=0, Pn=0, Pl=0, Ot=0, explanation="Ca.")
    with caplog.at_level(logging.DEBUG):
        files = write_result_files(screening, source, algorithm_of(bundle), ResultFolders(tmp_path / "pacs", tmp_path / "ehr"),
                                   picture=lambda: np.zeros((8, 8, 3), np.uint8))
    assert "PatientSex, StudyDate hold(s) a value DICOM does not allow" in files.note
    assert [p.parent.name for p in files.paths] == ["ehr"]  # the FHIR Bundle still goes
    assert "secret" not in files.note and "secret" not in caplog.text


class _RecordingPacs:
    """Keeps what it is given, and finds it again: enough of a PACS for what `store_results` calls."""

    def __init__(self) -> None:
        self.kept: list = []

    def store(self, datasets) -> None:
        self.kept += list(datasets)

    def stored(self, study_uid: str, uids: list[str]) -> list[str]:
        return [uid for uid in uids if uid in {str(ds.SOPInstanceUID) for ds in self.kept}]


def test_the_files_and_the_pacs_store_of_one_batch_share_each_picture(tiny_bundle, tmp_path, monkeypatch):
    import clare_dist.result_files as result_files
    from clare_dist.pacs.stages import store_results
    from clare_dist.scans import ScanConfig
    from clare_dist.screening import Screener

    drawn = []

    def draw(bundle, index, screening, source, images_root=None, limits=None):
        drawn.append(screening.scan_id)
        return np.full((16, 24, 3), len(drawn), np.uint8)

    monkeypatch.setattr(result_files, "explanation_picture", draw)
    bundle = load_bundle(tiny_bundle)
    sources = [dx(seed, "explicit") for seed in (1, 2)]
    screenings = Screener(bundle, threads=1).screen(sources, ["a", "b"])
    pictures = result_files.batch_pictures(bundle, None, screenings, sources, ScanConfig())
    written = result_files.write_batch_results(screenings, sources, bundle, None, ResultFolders(tmp_path), ScanConfig(),
                                               pictures)
    pacs = _RecordingPacs()
    assert store_results(screenings, sources, bundle, None, pacs, ScanConfig(), pictures) == ["confirmed"] * 2
    assert written == 4 and drawn == ["a", "b"]  # each figure drawn once, for both ways out
    captures = {str(ds.SOPInstanceUID): ds for ds in pacs.kept if ds.Modality == "OT"}
    assert len(captures) == 2
    for uid, stored in captures.items():
        on_disk = pydicom.dcmread(tmp_path / f"{uid}.dcm")
        assert np.array_equal(on_disk.pixel_array, stored.pixel_array)
