"""Tests of scan decoding: real NIH PNGs, crafted PNG/JPEG/DICOM files, and every ScanError kind."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from conftest import SAMPLE, SAMPLE_IMAGES, missing_shared
from scan_files import dicom_bytes, gradient, png_bytes, png_with_header_size

from clare_dist.scans import (
    SCAN_ERROR_KINDS,
    ScanConfig,
    ScanError,
    preprocess_scan,
    read_scan,
    resize_gray,
    sniff_format,
)

RGBA_ORIGINALS = ["00000100_000", "00001369_000", "00002578_000", "00004934_000", "00005224_000", "00005813_000"]
L_ORIGINALS = ["00000001_000", "00000013_003", "00009285_000", "00027426_000"]


@pytest.fixture(scope="module")
def sample() -> Path:
    if not SAMPLE_IMAGES.is_dir():
        missing_shared("the real CXR14 images", SAMPLE_IMAGES)
    return SAMPLE


def scan_error(source, **kwargs) -> ScanError:
    with pytest.raises(ScanError) as info:
        read_scan(source, **kwargs)
    assert info.value.kind in SCAN_ERROR_KINDS
    assert str(info.value) == info.value.message
    return info.value


# --- real NIH images ---------------------------------------------------------------------


def test_every_sample_image_decodes_to_pillows_pixels(sample: Path) -> None:
    paths = sorted((sample / "images").glob("*.png"))
    assert len(paths) == 501
    for i, path in enumerate(paths):
        image = read_scan(path)
        assert image.shape == (512, 512) and image.dtype == np.uint8
        if i % 8 == 0:  # full comparison on 63 of them keeps the test at a few seconds
            np.testing.assert_array_equal(image, np.asarray(Image.open(path)))
            assert preprocess_scan(path).shape == (256, 256)


def test_preprocess_is_the_area_resize_of_the_file_by_default(sample: Path) -> None:
    path = sample / "images-original" / "00000001_000.png"
    expected = cv2.resize(np.asarray(Image.open(path)), (256, 256), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(preprocess_scan(path), expected)
    np.testing.assert_array_equal(preprocess_scan(path, ScanConfig(preprocessing="area/1")), expected)
    np.testing.assert_array_equal(preprocess_scan(path.read_bytes(), ScanConfig(size=128)).shape, (128, 128))


def test_the_legacy_preprocessing_is_the_lanczos_resize_of_the_file(sample: Path) -> None:
    path = sample / "images" / "00000001_000.png"
    expected = np.asarray(Image.open(path).resize((256, 256), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(preprocess_scan(path, ScanConfig(preprocessing="lanczos/1")), expected)


def test_area_preprocessing_decodes_a_jpeg_at_a_reduced_dct_scale(tmp_path: Path, sample: Path) -> None:
    """libjpeg's 1/2ᵏ scaling (Pillow's draft) down to the input side at the least, then INTER_AREA."""
    pixels = np.asarray(Image.open(sample / "images-original" / "00000001_000.png"))  # 1024²
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, format="JPEG", quality=92)
    with Image.open(io.BytesIO(data.getvalue())) as image:
        image.draft("L", (256, 256))
        assert image.size == (256, 256)  # 1/4 scale: the DCT itself does the reduction
        expected = np.asarray(image.convert("L"))
    np.testing.assert_array_equal(preprocess_scan(data.getvalue()), expected)
    with Image.open(io.BytesIO(data.getvalue())) as image:
        image.draft("L", (300, 300))
        assert image.size == (512, 512)
        expected = cv2.resize(np.asarray(image), (300, 300), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(preprocess_scan(data.getvalue(), ScanConfig(size=300)), expected)
    full = read_scan(data.getvalue())  # read_scan keeps the file's own resolution
    assert full.shape == (1024, 1024)
    legacy = preprocess_scan(data.getvalue(), ScanConfig(preprocessing="lanczos/1"))
    np.testing.assert_array_equal(legacy, np.asarray(Image.fromarray(full).resize((256, 256), Image.Resampling.LANCZOS)))


def test_an_unknown_preprocessing_is_refused() -> None:
    from clare_dist.scans.preprocessing import UnknownPreprocessingError

    with pytest.raises(UnknownPreprocessingError, match=r"unknown scan preprocessing 'area/9'; this clare-dist has \['area/1', 'lanczos/1'\]"):
        ScanConfig(preprocessing="area/9")


@pytest.mark.parametrize("name", RGBA_ORIGINALS)
def test_rgba_originals_decode_as_their_grayscale(sample: Path, name: str) -> None:
    path = sample / "images-original" / f"{name}.png"
    with Image.open(path) as original:
        assert original.mode == "RGBA"
        as_l = np.asarray(original.convert("L"))
    image = read_scan(path)
    assert image.shape == (1024, 1024)
    np.testing.assert_array_equal(image, as_l)
    # images/ holds the same scan, converted to L and LANCZOS-resized to 512 when the sample was
    # made; the same steps here reproduce it exactly (measured: max abs diff 0 on all six).
    copy = np.asarray(Image.open(sample / "images" / f"{name}.png")).astype(int)
    diff = np.abs(resize_gray(image, 512, "lanczos/1").astype(int) - copy)
    assert diff.mean() < 0.5 and diff.max() <= 1


@pytest.mark.parametrize("name", L_ORIGINALS)
def test_grayscale_originals_decode(sample: Path, name: str) -> None:
    path = sample / "images-original" / f"{name}.png"
    image = read_scan(path)
    side = 512 if name == "00027426_000" else 1024
    assert image.shape == (side, side)
    np.testing.assert_array_equal(image, np.asarray(Image.open(path)))
    copy = np.asarray(Image.open(sample / "images" / f"{name}.png"))
    assert np.abs(resize_gray(image, 512, "lanczos/1").astype(int) - copy).max() <= 1


def test_png_named_dcm_decodes_as_png(tmp_path: Path) -> None:
    pixels = gradient()
    path = tmp_path / "scan.dcm"
    path.write_bytes(png_bytes(Image.fromarray(pixels)))
    np.testing.assert_array_equal(read_scan(path), pixels)
    np.testing.assert_array_equal(read_scan(str(path)), pixels)


# --- PNG and JPEG modes --------------------------------------------------------------------


def test_16_bit_png_is_scaled_by_its_own_range() -> None:
    stored = np.array([[100, 1100], [2100, 5200]], np.uint16)
    data = png_bytes(Image.fromarray(stored))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    np.testing.assert_array_equal(read_scan(data), [[0, 50], [100, 255]])  # (v - 100) * 255 / 5100


def test_a_flat_scan_is_refused_not_screened() -> None:
    data = png_bytes(Image.fromarray(np.full((3, 5), 4000, np.uint16)))
    error = scan_error(data)
    assert error.kind == "bad_pixels" and "flat" in error.message


@pytest.mark.parametrize("mode", ["LA", "RGB", "RGBA", "P", "1"])
def test_color_and_palette_modes_convert_to_luminance(mode: str) -> None:
    source = Image.fromarray(gradient()).convert(mode)
    expected = np.asarray(source.convert("L"))
    np.testing.assert_array_equal(read_scan(png_bytes(source)), expected)


def test_rgba_is_not_read_from_its_first_channel() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 1] = 200  # pure green: luminance 0.587 * 200
    rgba[..., 3] = 255
    rgba[7, 7, 1] = 0
    assert read_scan(png_bytes(Image.fromarray(rgba, "RGBA")))[0, 0] == 117


def test_jpeg_decodes_close_to_its_source() -> None:
    pixels = gradient(128, 96)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95)
    assert sniff_format(out.getvalue()) == "jpeg"
    image = read_scan(out.getvalue())
    assert image.shape == pixels.shape and image.dtype == np.uint8
    assert np.abs(image.astype(int) - pixels).mean() < 3


def test_sources_may_be_bytearray_and_memoryview() -> None:
    data = png_bytes(Image.fromarray(gradient()))
    for source in (bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(read_scan(source), gradient())


# --- bad input -----------------------------------------------------------------------------


def test_empty() -> None:
    assert scan_error(b"").kind == "empty"


def test_truncated_png(sample: Path) -> None:
    data = (sample / "images-original" / "00000001_000.png").read_bytes()
    error = scan_error(data[: len(data) // 2])
    assert error.kind == "truncated" and "PNG" in error.message
    assert scan_error(data[:12]).kind == "truncated"  # magic bytes, then nothing


def test_truncated_jpeg() -> None:
    out = io.BytesIO()
    Image.fromarray(gradient(256, 256)).save(out, "JPEG")
    assert scan_error(out.getvalue()[: len(out.getvalue()) // 2]).kind == "truncated"


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"PatientName,Finding\nDoe^Jane,Effusion\n", "text"),
        (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "HTML"),
        (np.random.default_rng(0).bytes(4096), "binary"),
        (b"PK\x03\x04" + bytes(200), "ZIP"),
        (b"\x08\x00" + b"random text that starts like a DICOM group" * 3, "text"),
    ],
)
def test_not_an_image(content: bytes, hint: str) -> None:
    assert sniff_format(content) == "unknown"
    error = scan_error(content)
    assert error.kind == "not_an_image" and hint in error.message
    assert b"Doe" not in content or "Doe" not in error.message  # the content is never echoed


def test_png_header_with_huge_dimensions_is_refused_before_decoding() -> None:
    bomb = png_with_header_size(60_000, 60_000)
    assert len(bomb) < 100
    assert scan_error(bomb).kind == "too_many_pixels"  # Pillow's own bomb guard, mapped
    # Under Pillow's guard but over ours: refused from the header (loading would find it truncated).
    error = scan_error(png_with_header_size(8000, 8000))
    assert error.kind == "too_many_pixels" and "64,000,000" in error.message


def test_max_pixels_is_configurable() -> None:
    data = png_bytes(Image.fromarray(gradient(64, 48)))
    assert scan_error(data, config=ScanConfig(max_pixels=64 * 48 - 1)).kind == "too_many_pixels"
    assert read_scan(data, ScanConfig(max_pixels=64 * 48)).shape == (48, 64)
    with pytest.raises(ScanError, match="limit"):
        preprocess_scan(data, ScanConfig(max_pixels=100))


def test_missing_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "scan.png"
    error = scan_error(missing)
    assert error.kind == "unreadable" and str(missing) in error.message


def test_scan_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(ScanError("truncated", "cut short")))
    assert isinstance(error, ValueError) and (error.kind, error.message) == ("truncated", "cut short")
    with pytest.raises(ValueError, match="unknown ScanError kind"):
        ScanError("oops", "no such kind")


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"max_pixels": -1}, {"size": 2.5}, {"size": True}])
def test_scan_config_is_validated(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ScanConfig(**kwargs)


def test_resize_gray_rejects_non_grayscale() -> None:
    with pytest.raises(ValueError, match="2-D uint8"):
        resize_gray(np.zeros((4, 4, 3), np.uint8), 2)
    assert resize_gray(np.zeros((30, 50), np.uint8), 16).shape == (16, 16)  # non-square: squashed


# --- DICOM ---------------------------------------------------------------------------------


def test_dicom_without_window_is_min_max_scaled() -> None:
    stored = np.array([[100, 1100], [2100, 5200]])
    data = dicom_bytes(stored)
    assert sniff_format(data) == "dicom"
    np.testing.assert_array_equal(read_scan(data), [[0, 50], [100, 255]])


def test_monochrome1_is_the_inverse_of_monochrome2() -> None:
    stored = np.arange(64).reshape(8, 8) * 50
    mono2 = read_scan(dicom_bytes(stored, bits_stored=12))
    mono1 = read_scan(dicom_bytes(stored, bits_stored=12, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert mono2[0, 0] == 0 and mono1[0, 0] == 255


def test_rescale_then_window_are_applied() -> None:
    # Stored s -> modality value v = 2 s - 1000; window centre 0, width 2001 maps v to
    # ((v + 0.5) / 2000 + 0.5) * 255 (DICOM LINEAR), saturating outside the window.
    stored = np.array([[0, 250, 500], [600, 1000, 4095]])
    data = dicom_bytes(stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=2001)
    v = 2 * stored - 1000
    expected = np.clip(((v + 0.5) / 2000 + 0.5) * 255, 0, 255)
    image = read_scan(data)
    assert np.abs(image - expected).max() <= 1
    np.testing.assert_array_equal(image, [[0, 64, 128], [153, 255, 255]])


def test_window_keeps_its_meaning_when_no_pixel_reaches_its_ends() -> None:
    # All pixels inside a wide window: the centre stays mid-gray instead of being stretched.
    stored = np.array([[1900, 2048, 2200]])
    image = read_scan(dicom_bytes(stored, bits_stored=12, WindowCenter=2048, WindowWidth=4096))
    assert list(image[0]) == [118, 128, 137]  # this window is the identity on 0..4095: v * 255 / 4095


def test_voi_lut_sequence_is_preferred_to_the_window() -> None:
    # LUT of 4 entries from stored value 10; values below/above take the first/last entry, and its
    # output range 0..200 becomes 0..255.
    item = Dataset()
    item.LUTDescriptor = [4, 10, 8]
    item.LUTData = np.array([0, 40, 120, 200], "<u2").tobytes()
    stored = np.array([[0, 10, 11], [12, 13, 4000]])
    data = dicom_bytes(stored, bits_stored=12, VOILUTSequence=[item], WindowCenter=0, WindowWidth=1)
    np.testing.assert_array_equal(read_scan(data), [[0, 0, 51], [153, 255, 255]])


def test_signed_pixels_and_bits_stored_12_in_16() -> None:
    # 12-bit two's complement in 16-bit words, high bits holding garbage that must be masked.
    values = np.array([[-2048, -5], [5, 2047]])
    words = (values & 0x0FFF) | 0xA000
    stored = words.astype(np.uint16).view(np.int16)
    data = dicom_bytes(stored, bits_stored=12, signed=True, WindowCenter=0, WindowWidth=4096)
    expected = ((values + 0.5) / 4095 + 0.5) * 255
    image = read_scan(data)
    assert np.abs(image - expected).max() <= 1
    np.testing.assert_array_equal(image, [[0, 127], [128, 255]])


def test_unsigned_bits_stored_12_masks_high_bits() -> None:
    stored = np.array([[0, 1000], [2000, 4095]])
    with_garbage = dicom_bytes(stored | 0xF000, bits_stored=12)
    np.testing.assert_array_equal(read_scan(with_garbage), read_scan(dicom_bytes(stored, bits_stored=12)))


def test_dicom_without_preamble_and_compressed_dicom(tmp_path: Path) -> None:
    stored = np.arange(20).reshape(4, 5) * 100
    plain = read_scan(dicom_bytes(stored))
    no_preamble = dicom_bytes(stored, preamble=False)
    assert no_preamble.startswith(b"\x08\x00") and b"DICM" not in no_preamble
    assert sniff_format(no_preamble) == "dicom"
    np.testing.assert_array_equal(read_scan(no_preamble), plain)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(stored)))
    ds.compress(RLELossless)
    path = tmp_path / "rle.png"  # the name is ignored
    ds.save_as(path)
    np.testing.assert_array_equal(read_scan(path), plain)


def test_multi_frame_dicom_gives_its_first_frame() -> None:
    frames = np.stack([np.arange(16).reshape(4, 4), np.full((4, 4), 900)])
    data = dicom_bytes(frames.reshape(8, 4), Rows=4, NumberOfFrames=2)
    np.testing.assert_array_equal(read_scan(data), np.arange(16).reshape(4, 4) * 17)  # min-max of frame 0


def test_rgb_dicom_becomes_luminance() -> None:
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 1] = 200
    rgb[1, 2] = 0  # one black pixel: a flat image would be refused
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((2, 3)))))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    out = io.BytesIO()
    ds.save_as(out)
    expected = np.full((2, 3), 117)
    expected[1, 2] = 0
    np.testing.assert_array_equal(read_scan(out.getvalue()), expected)


def test_dicom_without_pixel_data() -> None:
    error = scan_error(dicom_bytes(None))
    assert error.kind == "no_pixel_data" and "Pixel Data" in error.message


def test_truncated_dicom_pixel_data() -> None:
    data = dicom_bytes(np.arange(64).reshape(8, 8))
    assert scan_error(data[:-20]).kind == "truncated"


def test_dicom_size_is_checked_before_decoding() -> None:
    # Headers claim far more pixels than the file holds: refused as too big, not as truncated.
    assert scan_error(dicom_bytes(np.zeros((2, 2)), Rows=8000, Columns=8000)).kind == "too_many_pixels"
    # Only the first frame is decoded, so the pixel limit is per frame; frames have their own.
    error = scan_error(dicom_bytes(np.zeros((2, 2)), Rows=4000, Columns=4000, NumberOfFrames=4))
    assert error.kind == "truncated" and "first frame" in error.message
    error = scan_error(dicom_bytes(np.zeros((2, 2)), NumberOfFrames=5000))
    assert error.kind == "too_many_pixels" and "5,000 frames" in error.message


def test_dicom_unsupported_photometric() -> None:
    # a syntax without a decoder: tests/test_hostile_files.py (MPEG2, and a plugin made unavailable)
    error = scan_error(dicom_bytes(np.zeros((2, 2)), photometric="PALETTE COLOR"))
    assert error.kind == "unsupported" and "PALETTE COLOR" in error.message


def test_dicom_patient_data_stays_out_of_results_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pydicom")
    caplog.set_level(logging.DEBUG, logger="clare_dist")
    data = dicom_bytes(
        np.arange(16).reshape(4, 4), PatientName="Doe^Jane", PatientID="PID-4711", PatientBirthDate="19700101"
    )
    image = read_scan(data)
    assert type(image) is np.ndarray and image.dtype == np.uint8 and image.shape == (4, 4)
    error = scan_error(data[:-6])  # failures do not leak them either
    assert caplog.records, "the module logs at debug level, so the capture must see something"
    for text in [r.getMessage() for r in caplog.records] + [error.message]:
        for secret in ("Doe", "Jane", "PID-4711", "19700101"):
            assert secret not in text
