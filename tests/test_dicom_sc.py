"""The explanation picture as a DICOM Secondary Capture: valid for dciodvfy whatever the source's
transfer syntax, in the source's study and a series of its own, the picture itself in JPEG
Baseline with its small print burned in, the same UIDs on a rerun and new ones for a new model,
refusals that say why, and no scan id or file path anywhere in the file.

The picture is the real `explanation_figure` of a hand-made screening: the decision is R4's on a
grid of references (as tests/test_screening.py lays them out), the scan is a synthetic DX."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage
import pydicom
import pytest
from PIL import Image, JpegImagePlugin
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage
from dicom_tools import dciodvfy

from clare_dist.encode.dicom_sc import SERIES_DESCRIPTION, explanation_sc
from clare_dist.encode.identity import MANUFACTURER, Algorithm
from clare_dist.errors import ResultEncodingError
from clare_dist.explanation import explanation
from clare_dist.labels import CLASSES, COMBINATIONS, combination_vector
from clare_dist.plots import explanation_figure, figure_png, figure_rgb
from clare_dist.result import INTENDED_USE, Screening
from clare_dist.rules import References, apply_rules
from clare_dist.synth.dicom import encode_dx

MODEL = "m-0123456789abcdef"
ALGORITHM = Algorithm(model_version=MODEL, backbone="resnet18")
SCAN_ID = "incoming/ward-7/scan-0042.dcm"  # a path, as `clare-dist predict` names a scan
# JPEG Baseline at quality 95, 4:2:2: the figure's mean absolute difference measures about 0.26.
MAX_MEAN_DIFFERENCE = 1.0
SYNTH_SYNTAXES = ["explicit", "jpeg2000", "rle"]
REAL_FILES = ["CT_small.dcm", "JPEG2000.dcm"]  # from other tools: GE CT explicit, a JPEG 2000 file


def stored_pixels(seed: int) -> np.ndarray:
    """A 12-bit 96×96 'chest': a bright oval on a dark field, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:96j, -1:1:96j]
    body = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1) * 2500.0
    return np.clip(body + rng.normal(800, 150, body.shape), 0, 4095).astype(np.uint16)


def header(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


@pytest.fixture(scope="module")
def screening() -> Screening:
    grid = {name: (i % 6 / 5, i // 6 / 4) for i, name in enumerate(COMBINATIONS)}
    point = (0.33, 0.27)
    rules = apply_rules(np.array([point]), References.from_mapping(grid))
    decision, top3 = str(rules.decision[0]), [str(name) for name in rules.top3[0]]
    classes = {code: int(bit) for code, bit in zip(CLASSES, combination_vector(decision))}
    return Screening(scan_id=SCAN_ID, model_version=MODEL, x=point[0], y=point[1], top3=top3,
                     top3_distances=[float(d) for d in rules.distances[0]], combination=decision,
                     explanation=explanation(top3, decision), **classes)


@pytest.fixture(scope="module")
def figure(screening):
    grid = {name: (i % 6 / 5, i // 6 / 4) for i, name in enumerate(COMBINATIONS)}
    rng = np.random.default_rng(1)
    cases = [(f"case-{i}", screening.combination, 0.01 * (i + 1), rng.integers(0, 256, (40, 40), dtype=np.uint8))
             for i in range(3)] + [("case-moved", screening.combination, 0.05, None)]
    scan = (stored_pixels(0) >> 4).astype(np.uint8)
    return explanation_figure(screening, References.from_mapping(grid), cases, INTENDED_USE, scan_image=scan)


@pytest.fixture(scope="module")
def picture(figure) -> np.ndarray:
    return figure_rgb(figure)


@pytest.fixture(scope="module")
def sources() -> dict[str, bytes]:
    """Source files: synthetic DX in three transfer syntaxes, and pydicom's files of other tools."""
    files = {name: encode_dx(stored_pixels(i), 12, transfer_syntax=name) for i, name in enumerate(SYNTH_SYNTAXES)}
    return files | {name: Path(get_testdata_file(name)).read_bytes() for name in REAL_FILES}


def written(sc: pydicom.Dataset, path: Path) -> Path:
    pydicom.dcmwrite(path, sc, enforce_file_format=True)
    return path


@pytest.mark.parametrize("name", [*SYNTH_SYNTAXES, *REAL_FILES])
def test_sc_is_valid_and_holds_the_picture_in_the_source_study(name, sources, screening, picture, tmp_path):
    source = header(sources[name])
    path = written(explanation_sc(screening, source, picture, ALGORITHM), tmp_path / "sc.dcm")

    errors, _, printed = dciodvfy(path)
    assert not errors and "SCImage" in printed, printed

    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert back.SOPClassUID == SecondaryCaptureImageStorage and back.Modality == "OT"
    assert back.PhotometricInterpretation == "YBR_FULL_422"
    assert back.BurnedInAnnotation == "YES" and back.LossyImageCompression == "01"
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert back.SeriesDescription == SERIES_DESCRIPTION and list(back.ImageType) == ["DERIVED", "SECONDARY"]
    assert back.PatientID == source.PatientID and back.PatientName == source.PatientName

    decoded = pixel_array(path, decoding_plugin="pillow")  # converted back to RGB
    assert decoded.shape == picture.shape
    difference = np.abs(decoded.astype(np.int16) - picture).mean()
    assert difference < MAX_MEAN_DIFFERENCE, f"JPEG changed the picture by {difference:.2f} on average"

    frame = next(generate_frames(back.PixelData, number_of_frames=1))
    with Image.open(io.BytesIO(frame)) as jpeg:
        assert jpeg.format == "JPEG" and JpegImagePlugin.get_sampling(jpeg) == 1  # 4:2:2, as YBR_FULL_422 says


def test_the_algorithm_is_named_as_ihe_air_names_it(sources, screening, picture):
    sc = explanation_sc(screening, header(sources["explicit"]), picture, ALGORITHM)
    assert (sc.Manufacturer, sc.ManufacturerModelName, sc.SoftwareVersions) == (
        MANUFACTURER, ALGORITHM.model_name, ALGORITHM.software_version)
    [algorithm] = [item for item in sc.ContributingEquipmentSequence
                   if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"]
    purpose = algorithm.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodingSchemeDesignator, purpose.CodeMeaning) == ("99IHE", "Processing Algorithm")
    assert algorithm.DeviceUID == ALGORITHM.device_uid and algorithm.Manufacturer == MANUFACTURER
    assert algorithm.ManufacturerModelName == ALGORITHM.model_name
    assert algorithm.SoftwareVersions == ALGORITHM.software_version
    assert MODEL in sc.DerivationDescription and INTENDED_USE in sc.DerivationDescription


def test_uids_are_the_same_on_a_rerun_and_new_for_a_new_model(sources, screening, picture):
    source = header(sources["explicit"])
    first, again = (explanation_sc(screening, source, picture, ALGORITHM) for _ in range(2))
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (first.SOPInstanceUID, first.SeriesInstanceUID)
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID

    other_model = "m-fedcba9876543210"
    new = explanation_sc(replace(screening, model_version=other_model), source, picture,
                         replace(ALGORITHM, model_version=other_model))
    assert new.SOPInstanceUID != first.SOPInstanceUID and new.SeriesInstanceUID != first.SeriesInstanceUID

    sibling = header(sources["explicit"])  # another image of the same study: same series, own instance
    sibling.SOPInstanceUID = "1.2.3.4.5"
    other = explanation_sc(screening, sibling, picture, ALGORITHM)
    assert other.SeriesInstanceUID == first.SeriesInstanceUID and other.SOPInstanceUID != first.SOPInstanceUID


def test_the_burned_in_small_print_is_drawn_into_the_picture(figure, screening):
    """The stored pixels are the picture (checked above); here, the picture prints the intended
    use and the model version, so BurnedInAnnotation YES is what the reader sees."""
    small_print = [t.get_text() for t in figure.texts if MODEL in t.get_text()]
    assert small_print and INTENDED_USE.capitalize() in small_print[0]


def test_a_failed_screening_or_a_wrong_picture_is_refused(sources, screening, picture):
    source = header(sources["explicit"])
    failed = Screening.failed(SCAN_ID, "unreadable", "not a DICOM file", MODEL)
    with pytest.raises(ResultEncodingError, match="could not be screened"):
        explanation_sc(failed, source, picture, ALGORITHM)
    for wrong in (picture[..., 0], picture.astype(np.float32), np.dstack([picture, picture[..., :1]]),
                  picture[:0], picture.tolist()):
        with pytest.raises(ResultEncodingError, match="H×W×3 uint8"):
            explanation_sc(screening, source, wrong, ALGORITHM)
    with pytest.raises(ResultEncodingError, match="m-other"):
        explanation_sc(screening, source, picture, replace(ALGORITHM, model_version="m-other"))
    del source.StudyInstanceUID
    with pytest.raises(ResultEncodingError, match="no StudyInstanceUID"):
        explanation_sc(screening, source, picture, ALGORITHM)


def test_the_picture_holds_the_pixels_the_figure_png_shows(figure, picture):
    """The SC's pixels are drawn straight from the canvas, not through a PNG: the same pixels."""
    with Image.open(io.BytesIO(figure_png(figure))) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), picture)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3 and picture.flags.c_contiguous


def test_no_scan_id_and_nothing_else_of_the_patient_is_in_the_sc(sources, screening, picture, tmp_path):
    source = header(sources["explicit"])
    data = written(explanation_sc(screening, source, picture, ALGORITHM), tmp_path / "sc.dcm").read_bytes()
    for part in (SCAN_ID, Path(SCAN_ID).name, Path(SCAN_ID).stem, "ward-7"):
        assert part.encode() not in data
    back = pydicom.dcmread(io.BytesIO(data))
    patient = {element.keyword for element in back if element.tag.group == 0x0010}
    assert patient == {"PatientName", "PatientID", "PatientBirthDate", "PatientSex"}
    assert "PatientAge" in source and "PatientAge" not in back  # the source has more; none of it came


def test_the_picture_shows_each_similar_case_framed_and_titled_and_a_missing_one_as_missing(screening):
    """Each case's thumbnail lands in the picture whole (its own pixels, aspect kept, framed), under
    its id, combination and distance; a moved file is a grey square saying so."""
    grid = {name: (i % 6 / 5, i // 6 / 4) for i, name in enumerate(COMBINATIONS)}
    shades = [110 + 15 * i for i in range(8)]
    cases = [(f"case-{i}", screening.combination, 0.01 * (i + 1), np.full((40, 80 if i == 3 else 40), shade, np.uint8))
             for i, shade in enumerate(shades)] + [("case-moved", screening.combination, 0.09, None)]
    fig = explanation_figure(screening, References.from_mapping(grid), cases, INTENDED_USE)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    for case_id, combination, distance, _ in cases:
        assert f"{case_id}\n{combination}   d = {distance:.3f}" in texts
    assert "image not found" in texts
    picture = figure_rgb(fig)
    for i, shade in enumerate(shades):
        # the grey colormap's 256 steps move a shade by up to one; antialiased text and frames have
        # pixels of any grey, but not in one block
        mask = (np.abs(picture.astype(np.int16) - shade) <= 1).all(axis=2)
        regions, _ = ndimage.label(mask)
        largest = np.bincount(regions.ravel())[1:].argmax() + 1  # the thumbnail, not a frame's blended edge
        rows, cols = np.nonzero(regions == largest)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height > 60 and abs(width / height - (2 if i == 3 else 1)) < 0.05, (shade, height, width)
        framed_row = picture[rows.min() - 1, cols.min():cols.max() + 1]
        assert (framed_row < 200).all(), "a thumbnail's frame is drawn all round (the page is white)"
        below = picture[rows.max() + 1, cols.min():cols.max() + 1]
        assert (below < 200).all(), "a thumbnail's frame is drawn all round (the page is white)"
