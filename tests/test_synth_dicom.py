"""The synthetic archive's DX DICOM files: valid for dciodvfy, consistent UIDs and dates, accepted by
highdicom as a source, and every transfer syntax decoding back to the uncompressed archive's pixels."""

from __future__ import annotations

import io
import zlib
from collections import defaultdict
from dataclasses import replace
from datetime import date
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from dicom_tools import dciodvfy

from clare_dist.cli import main
from clare_dist.synth import SynthConfig, write_archive
from clare_dist.synth.dicom import (
    J2K_LOSSY_PSNR,
    JPEG_LS_NEAR,
    LOSSY_SYNTAXES,
    TRANSFER_SYNTAXES,
    age_on,
    encode_dx,
    study_times,
)

CONFIG = SynthConfig(n_images=30, size=64, seed=9, min_per_combination=1, dicom=True)
COMPRESSED = [name for name in TRANSFER_SYNTAXES if name != "explicit"]
PSNR_FLOOR = J2K_LOSSY_PSNR - 1  # dB, peak 2**BitsStored - 1: jpeg2000-lossy files measure 50.0 .. 50.1


def assert_valid_dx(path: Path) -> None:
    errors, _, printed = dciodvfy(path)
    assert not errors and "DXImageForPresentation" in printed, f"{path.name}:\n{printed}"


def inflated_copy(path: Path, out: Path) -> Path:
    """An explicit VR copy of a Deflated file, after checking the file is a raw deflate of exactly that.

    dciodvfy as Debian builds it (dicom3tools 1.00) reads no Deflated file at all, not even
    dcmtk's, so the deflated dataset is validated as the explicit VR dataset it inflates to.
    """
    data = path.read_bytes()
    meta_end = 144 + int.from_bytes(data[140:144], "little")  # after (0002,0000) UL and its group
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True)
    explicit = out.read_bytes()
    assert zlib.decompress(data[meta_end:], wbits=-15) == explicit[144 + int.from_bytes(explicit[140:144], "little") :]
    return out


@pytest.fixture(scope="module")
def explicit(tmp_path_factory):
    return write_archive(tmp_path_factory.mktemp("explicit"), CONFIG)


def files(archive) -> list[Path]:
    return sorted(archive.image_dir.iterdir())


def csv_rows(archive) -> dict[str, list[str]]:
    return {line.split(",")[0]: line.split(",") for line in archive.data_entry_csv.read_text().splitlines()[1:]}


def test_every_file_is_a_valid_dx_for_presentation(explicit):
    kinds = set()
    rows = csv_rows(explicit)
    for path in files(explicit):
        assert_valid_dx(path)
        ds = pydicom.dcmread(path)
        kinds.add((ds.PhotometricInterpretation, ds.BitsStored))
        assert ds.SOPClassUID == pydicom.uid.DigitalXRayImageStorageForPresentation
        assert (ds.RescaleIntercept, ds.RescaleSlope) == (0, 1)
        assert ds.PresentationLUTShape == {"MONOCHROME1": "INVERSE", "MONOCHROME2": "IDENTITY"}[ds.PhotometricInterpretation]
        assert ds.ViewPosition == rows[path.name][6] and ds.ImagerPixelSpacing == [float(rows[path.name][9])] * 2
        region = ds.AnatomicRegionSequence[0]
        assert (region.CodeValue, region.CodingSchemeDesignator) == ("816094009", "SCT") and ds.BodyPartExamined == "CHEST"
        assert ds.Manufacturer == "clare-dist synthetic" and ds.LossyImageCompression == "00"
    assert kinds == {(m, b) for m in ("MONOCHROME1", "MONOCHROME2") for b in (12, 16)}


def test_uids_and_dates_hold_together_per_patient_and_follow_up(explicit):
    rows = csv_rows(explicit)
    studies, series, instances = set(), set(), set()
    patients = defaultdict(list)
    for path in files(explicit):
        ds = pydicom.dcmread(path)
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert uid.is_valid and uid.startswith("2.25.")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        studies.add(ds.StudyInstanceUID)
        series.add((ds.StudyInstanceUID, ds.SeriesInstanceUID))
        instances.add(ds.SOPInstanceUID)
        row = rows[path.name]
        assert ds.PatientID == row[3].zfill(8) and ds.PatientAge == f"{int(row[4]):03d}Y" and ds.PatientSex == row[5]
        birth = date.fromisoformat(f"{ds.PatientBirthDate[:4]}-{ds.PatientBirthDate[4:6]}-{ds.PatientBirthDate[6:]}")
        studied = date.fromisoformat(f"{ds.StudyDate[:4]}-{ds.StudyDate[4:6]}-{ds.StudyDate[6:]}")
        assert age_on(birth, studied) == int(row[4]) and ds.ContentDate == ds.StudyDate
        patients[ds.PatientID].append((int(row[2]), ds.StudyDate + ds.StudyTime, ds.PatientBirthDate, str(ds.PatientName)))
    n = len(files(explicit))
    assert len(studies) == len({s for _, s in series}) == len(instances) == n  # one study per follow-up, one image each
    assert max(len(v) for v in patients.values()) >= 2
    for visits in patients.values():
        visits.sort()
        assert [v[0] for v in visits] == list(range(len(visits)))
        assert [v[1] for v in visits] == sorted({v[1] for v in visits})  # chronological, no two at one time
        assert len({v[2:] for v in visits}) == 1  # one birth date and name per patient


def test_study_times_fit_any_rising_ages_including_a_leap_day_birth():
    rng = np.random.default_rng(0)
    for trial in range(300):
        ages = np.minimum(95, rng.integers(2, 90) + np.cumsum(rng.integers(0, 2, rng.integers(1, 12)))).tolist()
        birth, times = study_times(ages, np.random.default_rng(trial))
        assert [age_on(birth, t.date()) for t in times] == ages
        assert times == sorted(set(times)) and all(8 <= t.hour < 18 for t in times)
    assert age_on(date(2008, 2, 29), date(2009, 2, 28)) == 0 and age_on(date(2008, 2, 29), date(2009, 3, 1)) == 1
    with pytest.raises(ValueError, match="must not decrease"):
        study_times([40, 39], rng)


def test_same_config_same_bytes_other_seed_other_uids(tmp_path):
    for name in ("explicit", "jpeg-lossless"):
        config = replace(CONFIG, n_images=26, size=32, transfer_syntax=name)
        a, b = write_archive(tmp_path / f"a-{name}", config), write_archive(tmp_path / f"b-{name}", config)
        assert [p.read_bytes() for p in files(a)] == [p.read_bytes() for p in files(b)], name
    c = write_archive(tmp_path / "c", replace(config, seed=config.seed + 1))
    uids = [{pydicom.dcmread(p).StudyInstanceUID for p in files(x)} for x in (a, c)]
    assert not uids[0] & uids[1]


def test_highdicom_takes_a_file_as_a_source_image(explicit):
    ds = pydicom.dcmread(files(explicit)[0])
    source = hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
    assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    mask = np.zeros((1, ds.Rows, ds.Columns), bool)
    mask[0, 20:40, 24:44] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="heart", segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Heart, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=[ds], pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="clare-dist tests", manufacturer_model_name="test", software_versions="0",
        device_serial_number="0",
    )
    assert (seg.StudyInstanceUID, seg.PatientID, seg.PatientBirthDate) == (
        ds.StudyInstanceUID, ds.PatientID, ds.PatientBirthDate
    )


@pytest.mark.parametrize("name", COMPRESSED)
def test_each_transfer_syntax_decodes_to_the_uncompressed_pixels_and_validates(explicit, name, tmp_path):
    archive = write_archive(tmp_path / name, replace(CONFIG, transfer_syntax=name))
    assert [p.name for p in files(archive)] == [p.name for p in files(explicit)]
    errors = []
    for path, plain_path in zip(files(archive), files(explicit)):
        ds, plain = pydicom.dcmread(path), pydicom.dcmread(plain_path)
        assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[name]
        assert_valid_dx(inflated_copy(path, tmp_path / "inflated.dcm") if name == "deflate" else path)
        assert ds.StudyInstanceUID == plain.StudyInstanceUID
        error = ds.pixel_array.astype(np.int64) - plain.pixel_array
        errors.append(np.abs(error).max())
        if name in LOSSY_SYNTAXES:  # a new image: its own series and instance, marked lossy
            assert ds.LossyImageCompression == "01" and float(ds.LossyImageCompressionRatio) > 1.2
            assert ds.LossyImageCompressionMethod == {"jpeg-ls-near": "ISO_14495_1"}.get(name, "ISO_15444_1")
            assert ds.SeriesInstanceUID != plain.SeriesInstanceUID and ds.SOPInstanceUID != plain.SOPInstanceUID
        else:
            assert ds.LossyImageCompression == "00" and ds.SOPInstanceUID == plain.SOPInstanceUID
        if name == "jpeg2000-lossy":
            psnr = 10 * np.log10((2**ds.BitsStored - 1) ** 2 / np.mean(error.astype(float) ** 2))
            assert psnr >= PSNR_FLOOR, (path.name, psnr)
    if name == "jpeg-ls-near":
        assert max(errors) == JPEG_LS_NEAR  # no value further off, and the encoding is really near-lossless
    elif name in LOSSY_SYNTAXES:
        assert min(errors) > 0
    else:
        assert max(errors) == 0


def test_encode_dx_writes_one_file_of_any_stored_array(tmp_path):
    stored = np.random.default_rng(1).integers(0, 4096, (40, 56)).astype(np.uint16)
    for name in TRANSFER_SYNTAXES:
        data = encode_dx(stored, 12, "MONOCHROME1", name)
        assert encode_dx(stored, 12, "MONOCHROME1", name) == data
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.pixel_array.shape == (40, 56) and ds.BitsStored == 12 and ds.PhotometricInterpretation == "MONOCHROME1"
        if name not in LOSSY_SYNTAXES:
            np.testing.assert_array_equal(ds.pixel_array, stored)
        if name != "deflate":
            (tmp_path / "one.dcm").write_bytes(data)
            assert_valid_dx(tmp_path / "one.dcm")
    other = pydicom.dcmread(io.BytesIO(encode_dx(stored ^ 1, 12)))
    assert other.SOPInstanceUID != pydicom.dcmread(io.BytesIO(encode_dx(stored, 12))).SOPInstanceUID
    with pytest.raises(ValueError, match="0..4095"):
        encode_dx(stored | 4096, 12)
    with pytest.raises(ValueError, match="unknown transfer syntax"):
        encode_dx(stored, 12, transfer_syntax="jpeg-xl")
    with pytest.raises(ValueError, match="integer"):
        encode_dx(stored.astype(float), 12)


def test_transfer_syntax_is_a_dicom_option(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown transfer_syntax"):
        replace(CONFIG, transfer_syntax="jpeg-xl")
    with pytest.raises(ValueError, match="set dicom=True"):
        replace(CONFIG, dicom=False, transfer_syntax="rle")
    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--n-images", "52", "--size", "32", "--dicom", "--transfer-syntax", "rle"]) == 0
    assert {pydicom.dcmread(p).file_meta.TransferSyntaxUID for p in (out / "images").iterdir()} == {pydicom.uid.RLELossless}
    capsys.readouterr()
    assert main(["synth", "--out", str(tmp_path / "png"), "--n-images", "52", "--transfer-syntax", "rle"]) == 2
    assert capsys.readouterr().err == "clare-dist synth: error: --transfer-syntax encodes DICOM files; add --dicom\n"
