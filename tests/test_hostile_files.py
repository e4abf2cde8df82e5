"""Every file a hospital archive holds is decoded correctly or refused with its kind: through
`preprocess_scan` (bytes and paths), `clare-dist predict`, and with bounded memory. The batch job
and the API run the same corpus in test_embed.py and test_serve.py."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hostile_files import Hostile, corpus, scan_png, stored_scan, write_special_files
from scan_files import dicom_bytes, gradient

from clare_dist.scans import SCAN_ERROR_KINDS, ScanConfig, ScanError, preprocess_scan, read_dicom_header, read_scan
from clare_dist.synth import TRANSFER_SYNTAXES

CORPUS = corpus()
LOSSY = {"jpeg-ls-near": (0.5, 1), "jpeg2000-lossy": (1.0, 12)}  # (mean, max) gray levels off


def outcome(source, config: ScanConfig = ScanConfig()) -> str:
    try:
        image = preprocess_scan(source, config)
    except ScanError as err:
        assert err.kind in SCAN_ERROR_KINDS and err.message
        return err.kind
    assert image.shape == (config.size, config.size) and image.dtype == np.uint8
    return "ok"


def test_the_corpus_covers_every_kind_a_file_can_hold() -> None:
    kinds = {entry.outcome for entry in CORPUS} | set(write_special_files_outcomes().values())
    assert kinds >= set(SCAN_ERROR_KINDS) - {"internal"} | {"ok"}


def write_special_files_outcomes() -> dict[str, str]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return write_special_files(Path(folder), scan_png())


@pytest.mark.parametrize("entry", CORPUS, ids=[entry.name for entry in CORPUS])
def test_each_file_is_decoded_or_refused_with_its_kind(entry: Hostile, tmp_path: Path) -> None:
    assert outcome(entry.data) == entry.outcome
    path = tmp_path / entry.name
    path.write_bytes(entry.data)
    assert outcome(path) == entry.outcome


def test_reading_a_header_for_the_results_keeps_the_same_contract() -> None:
    """The SR and SC copy the source's header: reading it ends in a header without pixel data,
    None (PNG/JPEG: no study), or a ScanError, for every file of the corpus."""
    seen = set()
    for entry in CORPUS:
        try:
            header = read_dicom_header(entry.data)
        except ScanError as err:
            assert err.kind != "internal", entry.name
            seen.add("refused")
            continue
        if header is None:
            seen.add("not DICOM")
        else:
            assert not any(tag in header for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")), entry.name
            seen.add("header")
    assert seen == {"refused", "not DICOM", "header"}


@pytest.mark.timeout(60)
def test_fifos_sockets_links_and_awkward_names_are_never_opened_or_hang(tmp_path: Path) -> None:
    outcomes = write_special_files(tmp_path, scan_png())
    for name, expected in outcomes.items():
        assert outcome(tmp_path / name) == expected, name
    (tmp_path / "folder.png").mkdir()
    assert outcome(tmp_path / "folder.png") == "not_a_file"


def test_a_file_over_the_byte_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.dcm"
    with open(path, "wb") as f:
        f.truncate(3 << 20)  # sparse: 3 MiB that are never read
    assert outcome(path, ScanConfig(max_file_mb=2)) == "file_too_large"
    assert outcome(path.read_bytes(), ScanConfig(max_file_mb=2)) == "file_too_large"


def test_limits_are_settable_and_a_raised_limit_accepts_the_scan() -> None:
    data = dicom_bytes(stored_scan(64, 8), bits_stored=12)  # 8:1
    assert outcome(data) == "ok"
    assert outcome(data, ScanConfig(max_aspect=4)) == "bad_dimensions"
    frames = dicom_bytes(np.concatenate([stored_scan(), stored_scan()]), bits_stored=12, Rows=48, NumberOfFrames=2)
    assert outcome(frames) == "ok"
    assert outcome(frames, ScanConfig(max_frames=1)) == "too_many_pixels"


# --- what decodes, decodes right -------------------------------------------------------------


def by_name(name: str) -> bytes:
    return next(entry.data for entry in CORPUS if entry.name == name)


@pytest.mark.parametrize("name", ["jpeg-ls.dcm", "jpeg2000.dcm", "rle.dcm", "deflate.dcm", "no-preamble.dcm", "no-meta-group.dcm"])
def test_lossless_dicom_decodes_to_the_pixels_of_its_uncompressed_original(name: str) -> None:
    original = read_scan(by_name("good.dcm"))
    np.testing.assert_array_equal(read_scan(by_name(name)), original)


LOSSLESS = [name for name in TRANSFER_SYNTAXES if name not in LOSSY]


@pytest.mark.parametrize("syntax", LOSSLESS)
def test_every_lossless_transfer_syntax_decodes_exactly(syntax: str) -> None:
    np.testing.assert_array_equal(read_scan(by_name(f"dx-{syntax}.dcm")), read_scan(by_name("dx-explicit.dcm")))


@pytest.mark.parametrize("syntax", sorted(LOSSY))
def test_lossy_transfer_syntaxes_decode_within_their_tolerance(syntax: str) -> None:
    # jpeg-ls-near: no stored value off by more than NEAR (2 of 4095) -> at most 1 gray level of 255;
    # jpeg2000-lossy at ~50 dB PSNR: under one gray level on average, 12 at worst at the sharp edges
    # of this test image (measured 0.60 and 10).
    diff = np.abs(read_scan(by_name(f"dx-{syntax}.dcm")).astype(int) - read_scan(by_name("dx-explicit.dcm")))
    mean, worst = LOSSY[syntax]
    assert diff.mean() <= mean and diff.max() <= worst


def test_float_signed_and_32_bit_pixels_are_min_max_scaled_exactly() -> None:
    expected = read_scan(png_of(gradient(64, 48)))
    np.testing.assert_array_equal(read_scan(by_name("float.dcm")), expected)
    np.testing.assert_array_equal(read_scan(by_name("unsigned-32-bit.dcm")), expected)
    np.testing.assert_array_equal(read_scan(by_name("signed.dcm")), read_scan(by_name("good.dcm")))


def test_jpeg_baseline_dicom_and_rgb_dicom() -> None:
    assert np.abs(read_scan(by_name("jpeg-baseline.dcm")).astype(int) - gradient(64, 48)).mean() < 2
    np.testing.assert_array_equal(read_scan(by_name("rgb.dcm")), gradient(64, 48))


def png_of(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_a_missing_decoder_names_the_syntax_and_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels import decoders

    from clare_dist.scans import dicom

    real = dicom.get_decoder

    def without_plugins(syntax):
        decoder = real(syntax)
        monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
        return decoder

    monkeypatch.setattr(dicom, "get_decoder", without_plugins)
    with pytest.raises(ScanError) as info:
        read_scan(by_name("jpeg-ls.dcm"))
    assert info.value.kind == "unsupported" and "JPEG-LS" in info.value.message and "install" in info.value.message
    assert decoders  # the module whose class was patched is pydicom's own


# --- the contract: nothing unexpected escapes, nothing private is logged ---------------------


SECRET = "".join(["Doe", "^Jane ", "19700101"])  # as a header value might be quoted in an exception


def test_an_unexpected_failure_is_kind_internal_and_logged_without_its_message(monkeypatch, caplog) -> None:
    from clare_dist.scans import dicom

    def broken(data, config):
        raise RuntimeError(SECRET)

    monkeypatch.setattr("clare_dist.scans.read_dicom", broken)
    caplog.set_level(logging.ERROR, logger="clare_dist")
    with pytest.raises(ScanError) as info:
        read_scan(by_name("good.dcm"))
    assert info.value.kind == "internal" and "RuntimeError" in info.value.message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" not in logged and "broken" in logged  # the frames, not the message
    assert SECRET not in logged and SECRET not in info.value.message
    assert dicom.read_dicom is not broken


def test_predict_reports_each_bad_file_and_screens_the_rest(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    from clare_dist.cli import main

    paths = []
    for entry in CORPUS:
        path = tmp_path / entry.name
        path.write_bytes(entry.data)
        paths.append(path)
    special = write_special_files(tmp_path / "special", scan_png())
    paths += [tmp_path / "special" / name for name in special]
    expected = [e.outcome for e in CORPUS] + list(special.values())
    assert main(["predict", *map(str, paths), "--bundle", str(tiny_bundle), "--json"]) == 1
    out, err = capsys.readouterr()
    screened = [json.loads(line)["scan_id"] for line in out.splitlines()]
    assert screened == [p.name for p, kind in zip(paths, expected) if kind == "ok"]
    # one line per refused file, in order, naming it and its kind (a newline in a name is shown escaped)
    failures = [line.split(": ")[1:3] for line in err.splitlines() if line.startswith("clare-dist predict: ")]
    assert failures == [[p.name, kind] for p, kind in zip(paths, expected) if kind != "ok"]


# --- memory ------------------------------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent("""
    import re, resource, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from scan_files import dicom_bytes
    from clare_dist.scans import ScanConfig, ScanError, preprocess_scan

    def vm_bytes():
        return int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

    side = {side}
    y, x = np.mgrid[0:side, 0:side]
    scan = dicom_bytes(((x * 3 + y * 5) % 4096).astype(np.uint16), bits_stored=12)
    del x, y
    preprocess_scan(dicom_bytes(np.arange(64 * 64).reshape(64, 64) % 4096, bits_stored=12))  # lazy imports
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + {budget}, resource.RLIM_INFINITY))
    try:
        print(preprocess_scan(scan).shape)
    except ScanError as err:
        print("ScanError", err.kind)
""")


def probe_memory(side: int, budget: int) -> str:
    code = MEMORY_PROBE.format(tests=str(Path(__file__).parent), side=side, budget=budget)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    return done.stdout.strip() or done.stderr.strip().splitlines()[-1]


def test_the_largest_accepted_scan_decodes_in_bounded_memory() -> None:
    # 7000 x 7000 x 16 bit (98 MB of pixels, 49 M pixels: just under max_pixels) decodes within
    # 3.5x its stored bytes on top of the file: the file's bytes, pydicom's copy, the frame and
    # the 8-bit image. float64 temporaries of the frame alone would need 392 MB each.
    stored = 7000 * 7000 * 2
    assert probe_memory(7000, int(3.5 * stored)) == "(256, 256)"
    assert probe_memory(7000, int(1.5 * stored)).startswith(("ScanError internal", "MemoryError"))  # the bound is real


# --- real files made by other tools (dcmtk, GDCM, ...), as pydicom ships them ------------------

PYDICOM_FILES = Path(__import__("pydicom").__file__).parent / "data" / "test_files"
MR_SMALL = ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm",
            "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"]


def test_every_file_pydicom_ships_is_decoded_or_refused_never_internal() -> None:
    files = sorted(PYDICOM_FILES.glob("*.dcm"))
    assert len(files) >= 60
    outcomes = {path.name: outcome(path) for path in files}
    assert "internal" not in outcomes.values(), outcomes
    assert sum(kind == "ok" for kind in outcomes.values()) >= 50


@pytest.mark.parametrize("name", MR_SMALL)
def test_one_image_in_every_encoding_other_tools_wrote_decodes_to_the_same_pixels(name: str) -> None:
    np.testing.assert_array_equal(read_scan(PYDICOM_FILES / name), read_scan(PYDICOM_FILES / "MR_small.dcm"))


def test_jpeg_lossless_sv1_by_gdcm_equals_rle_of_the_same_image() -> None:
    np.testing.assert_array_equal(read_scan(PYDICOM_FILES / "SC_rgb_jpeg_gdcm.dcm"), read_scan(PYDICOM_FILES / "SC_rgb_rle.dcm"))


def test_12_bit_jpeg_extended_decodes_to_its_known_values() -> None:
    from pydicom import dcmread
    from pydicom.pixels import pixel_array

    ds = dcmread(PYDICOM_FILES / "JPEG-lossy.dcm")
    stored = pixel_array(ds, decoding_plugin="imagecodecs")  # clare_dist.scans.jpeg12: Pillow and GDCM refuse 12 bits
    assert (stored[420, 140], stored[230, 120]) == (244, 95)  # pydicom's reference values for this file
    image = read_scan(PYDICOM_FILES / "JPEG-lossy.dcm")  # no window in this file: min-max
    low, high = float(stored.min()), float(stored.max())
    np.testing.assert_array_equal(image, np.rint((stored - low) * (255 / (high - low))).astype(np.uint8))
