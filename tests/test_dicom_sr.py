"""The screening's DICOM SR: valid for dciodvfy on sources of every kind (synthetic DX in plain and
compressed syntaxes, real files of other tools), read back by highdicom as exactly what the API's
JSON says, filed in the source's study with stable UIDs, the algorithm named as IHE AIR asks, and
no patient data beyond what the source's patient and study modules hold."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage
from dicom_tools import dciodvfy

from clare_dist.encode.api_json import api_answer
from clare_dist.encode.dicom_sr import (
    CHEST_IMAGING,
    PROCESSING_ALGORITHM,
    SERIES_DESCRIPTION,
    screening_sr,
    sr_findings,
)
from clare_dist.encode.identity import MANUFACTURER, Algorithm
from clare_dist.errors import ClareError, ResultEncodingError
from clare_dist.explanation import explanation
from clare_dist.result import Screening, SimilarCase
from clare_dist.synth.dicom import DXSubject, encode_dx

SCAN_ID = "ward-7/bed-12/chest_0042.dcm"  # a file path that must not leak into the SR
TOP3 = ["Pl", "CaPl", "CaPnPl"]
# floats that a 16-character DS cannot hold exactly: the SR must still give them back bit for bit
SCREENED = Screening(
    scan_id=SCAN_ID, model_version="m-sr-1", x=0.1234567890123456, y=-1.0000000000000002, top3=TOP3,
    top3_distances=[0.015625, 0.1 + 0.2, 1 / 3], combination="CaPl", Ca=1, Pa=0, Pn=0, Pl=1, Ot=0,
    explanation=explanation(TOP3, "CaPl"),
    similar_cases=[SimilarCase("00000013_003.png", "CaPl", 0.125), SimilarCase("00000021_000.png", "Pl", 0.25)],
)
NO_FINDING = Screening(
    scan_id=SCAN_ID, model_version="m-sr-1", x=-3.5, y=2.0, top3=["No Finding", "Pa", "Ot"],
    top3_distances=[0.5, 1.25, 2.0], combination="No Finding", Ca=0, Pa=0, Pn=0, Pl=0, Ot=0,
    explanation=explanation(["No Finding", "Pa", "Ot"], "No Finding"), similar_cases=[],
    similar_note="no case index in this bundle",
)
# Checked for out-of-distribution input: one flagged for human review, one within what the model knows.
FLAGGED = replace(SCREENED, ood_score=3.25, needs_review=True)
WITHIN = replace(NO_FINDING, ood_score=0.8125, needs_review=False)
ALGORITHM = Algorithm(model_version="m-sr-1", backbone="resnet18")
SYNTHETIC = ["explicit", "jpeg2000", "jpeg-ls", "rle"]
REAL = ["CT_small.dcm", "JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm"]  # pydicom's files from other tools
# What dciodvfy says of an SR of a clean (synthetic) source: the project's private scheme is not
# one it knows, and its dicom3tools does not know Device UID (0018,1002) in the Contributing
# Equipment Sequence, where IHE AIR puts it.
EXPECTED_WARNINGS = {
    "Warning - Unrecognized defined term <99CLAREXR> for value 1 of attribute <Coding Scheme Designator>",
    "Warning - Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
    "Warning - Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class",
}


def header(data: bytes) -> Dataset:
    """A source as the encoder gets it: the header only."""
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def synthetic(transfer_syntax: str, seed: int = 0, subject: DXSubject | None = None) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 4096, size=(32, 32), dtype=np.uint16)
    return encode_dx(pixels, 12, "MONOCHROME2", transfer_syntax, subject=subject)


def source(name: str) -> Dataset:
    if name in SYNTHETIC:
        return header(synthetic(name))
    return pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)


def decision_part(screening: Screening) -> dict:
    """What the SR must say: the API answer's decision part, similar cases by identifier."""
    answer = api_answer(screening, "rid")
    keys = ("decision", "classes", "top3", "coordinates", "explanation", "needs_review", "ood_score")
    return {**{k: answer[k] for k in keys}, "similar_cases": [c["case_id"] for c in answer["similar_cases"]]}


def written(sr: Dataset, path: Path) -> Dataset:
    sr.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def group_of(sr: Dataset) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    (group,) = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    return group


@pytest.mark.parametrize("name", SYNTHETIC + REAL)
def test_the_sr_of_every_source_is_valid_and_says_what_the_api_says(name, tmp_path) -> None:
    src = source(name)
    for i, screening in enumerate((SCREENED, NO_FINDING, FLAGGED, WITHIN)):
        path = tmp_path / f"{i}.dcm"
        stored = written(screening_sr(screening, src, ALGORITHM), path)
        errors, warnings, printed = dciodvfy(path)
        assert not errors and "Comprehensive3DSR" in printed, printed
        if name in SYNTHETIC:
            assert warnings <= EXPECTED_WARNINGS, printed
        assert stored.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert sr_findings(stored) == decision_part(screening)


@pytest.mark.parametrize("name", ["jpeg2000", "CT_small.dcm"])
def test_the_sr_is_filed_in_the_source_study_and_references_the_source(name, tmp_path) -> None:
    src = source(name)
    sr = written(screening_sr(SCREENED, src, ALGORITHM), tmp_path / "sr.dcm")
    assert sr.SOPClassUID == Comprehensive3DSRStorage and sr.Modality == "SR"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.StudyInstanceUID == src.StudyInstanceUID
    assert sr.SeriesInstanceUID not in (src.SeriesInstanceUID, src.StudyInstanceUID)
    assert sr.SeriesDescription == SERIES_DESCRIPTION and sr.Manufacturer == MANUFACTURER
    (image,) = group_of(sr).source_images
    assert (image.referenced_sop_instance_uid, image.referenced_sop_class_uid) == (src.SOPInstanceUID, src.SOPClassUID)
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series,) = evidence.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    assert evidence.StudyInstanceUID == src.StudyInstanceUID and series.SeriesInstanceUID == src.SeriesInstanceUID
    assert (instance.ReferencedSOPInstanceUID, instance.ReferencedSOPClassUID) == (src.SOPInstanceUID, src.SOPClassUID)
    assert "PertinentOtherEvidenceSequence" not in sr


def uids(sr: Dataset) -> tuple[str, str, str]:
    return str(sr.SOPInstanceUID), str(sr.SeriesInstanceUID), str(group_of(sr).tracking_uid)


def test_uids_repeat_on_a_rerun_and_change_with_the_model_and_the_source() -> None:
    subject = DXSubject.synthetic(["sr test"], 7, 0, "F", date(1980, 5, 17), datetime(2021, 3, 4, 9, 30), "PA", 0.143)
    first = header(synthetic("explicit", subject=subject))
    same_study = header(synthetic("explicit", subject=replace(subject, series_uid=subject.series_uid + ".2",
                                                              sop_uid=subject.sop_uid + ".2")))
    once = uids(screening_sr(SCREENED, first, ALGORITHM))
    assert uids(screening_sr(SCREENED, first, ALGORITHM)) == once
    assert uids(screening_sr(NO_FINDING, first, ALGORITHM)) == once  # another answer replaces the report
    new_model = replace(ALGORITHM, model_version="m-sr-2")
    other = uids(screening_sr(replace(SCREENED, model_version="m-sr-2"), first, new_model))
    assert all(a != b for a, b in zip(once, other))
    sop, series, tracking = uids(screening_sr(SCREENED, same_study, ALGORITHM))
    assert sop != once[0] and tracking != once[2]
    assert series == once[1]  # one SR series per study and model
    assert len(set(once + other)) == 6


def test_the_algorithm_is_named_as_ihe_air_asks(tmp_path) -> None:
    sr = written(screening_sr(SCREENED, source("explicit"), ALGORITHM), tmp_path / "sr.dcm")
    ours = [e for e in sr.ContributingEquipmentSequence if e.get("DeviceUID") == ALGORITHM.device_uid]
    assert len(ours) == 1
    (purpose,) = ours[0].PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == PROCESSING_ALGORITHM
    assert ours[0].Manufacturer == MANUFACTURER
    assert ours[0].ManufacturerModelName == ALGORITHM.model_name
    assert ours[0].SoftwareVersions == ALGORITHM.software_version
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert {"99CLAREXR", "99IHE"} <= schemes
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    (observer,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
    assert observer.observer_identifying_attributes.uid == ALGORITHM.device_uid
    algorithm_items = {item.name.meaning: item.value for item in group_of(sr)[0].ContentSequence
                       if item.name.meaning in ("Algorithm Name", "Algorithm Version")}
    assert algorithm_items == {"Algorithm Name": ALGORITHM.model_name, "Algorithm Version": ALGORITHM.model_version}


def procedure_of(sr: Dataset) -> tuple[str, str]:
    (item,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported"]
    code = item.ConceptCodeSequence[0]
    return code.CodeValue, code.CodingSchemeDesignator


def test_the_procedure_reported_is_the_sources_own_else_chest_imaging(tmp_path) -> None:
    src = source("explicit")
    assert procedure_of(screening_sr(SCREENED, src, ALGORITHM)) == (CHEST_IMAGING.value, CHEST_IMAGING.scheme_designator)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "36643-5", "LN", "XR Chest 2 Views"
    src.ProcedureCodeSequence = [code]
    sr = written(screening_sr(SCREENED, src, ALGORITHM), tmp_path / "sr.dcm")
    assert procedure_of(sr) == ("36643-5", "LN")
    errors, _, printed = dciodvfy(tmp_path / "sr.dcm")
    assert not errors, printed


def test_a_failed_an_incomplete_or_another_models_screening_is_refused() -> None:
    src = source("explicit")
    failed = Screening.failed(SCAN_ID, "bad_header", "the DICOM Rows holds 2 values", "m-sr-1")
    with pytest.raises(ResultEncodingError, match="could not be screened"):
        screening_sr(failed, src, ALGORITHM)
    with pytest.raises(ResultEncodingError, match="incomplete"):
        screening_sr(replace(SCREENED, Pn=None), src, ALGORITHM)
    with pytest.raises(ResultEncodingError, match="m-sr-2"):
        screening_sr(SCREENED, src, replace(ALGORITHM, model_version="m-sr-2"))
    assert issubclass(ResultEncodingError, ClareError) and issubclass(ResultEncodingError, ValueError)


@pytest.mark.parametrize("keyword", ["PatientBirthDate", "StudyTime", "AccessionNumber", "StudyID", "PatientSex"])
def test_a_source_lacking_a_type_2_attribute_is_refused_by_its_name(keyword) -> None:
    src = source("jpeg2000")
    del src[keyword]
    with pytest.raises(ResultEncodingError, match=keyword):
        screening_sr(SCREENED, src, ALGORITHM)


def test_a_source_without_uids_is_refused_and_empty_type_2_attributes_are_kept_empty(tmp_path) -> None:
    src = source("explicit")
    src.SOPInstanceUID = ""
    with pytest.raises(ResultEncodingError, match="SOPInstanceUID"):
        screening_sr(SCREENED, src, ALGORITHM)
    src = source("explicit")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID"):
        setattr(src, keyword, "")
    del src.ReferringPhysicianName  # highdicom writes it empty, as DICOM allows
    sr = written(screening_sr(SCREENED, src, ALGORITHM), tmp_path / "sr.dcm")
    assert (sr.PatientID, sr.PatientBirthDate, sr.StudyID, sr.ReferringPhysicianName) == ("", "", "", "")
    errors, _, printed = dciodvfy(tmp_path / "sr.dcm")
    assert not errors, printed


def test_the_sr_holds_no_patient_data_beyond_the_sources_modules(tmp_path) -> None:
    src = source("CT_small.dcm")
    path = tmp_path / "sr.dcm"
    sr = written(screening_sr(SCREENED, src, ALGORITHM), path)
    assert sr.PatientID == src.PatientID and sr.PatientName == src.PatientName
    for element in sr:
        if element.keyword.startswith(("Patient", "Other", "Ethnic", "Issuer")) or element.keyword in (
                "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "StudyDescription"):
            assert element.keyword in src and src[element.keyword].value == element.value, element.keyword
    raw = path.read_bytes()
    for part in ("ward-7", "bed-12", "chest_0042"):
        assert part.encode() not in raw


def test_sr_findings_refuses_what_is_no_measurement_report() -> None:
    with pytest.raises(ResultEncodingError):
        sr_findings(source("explicit"))
