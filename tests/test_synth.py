"""The synthetic CXR14 archive: official layout, labels that read back, Table 1 proportions,
determinism, signs that are really in the pixels, and DICOM files that display like the PNGs."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from scipy import ndimage

from clare_dist.labels import (
    COMBINATIONS,
    MAX_FINDINGS,
    NO_FINDING,
    TABLE1_COUNTS,
    combination_name,
    combination_vector,
    findings_vector,
    parse_finding_labels,
)
from clare_dist.synth import SynthConfig, write_archive
from clare_dist.synth.draws import draw_combinations, draw_findings
from clare_dist.synth.radiograph import render_scan, sample_anatomy

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def read_rows(csv_path: Path) -> tuple[str, list[list[str]]]:
    header, *lines = csv_path.read_text().splitlines()
    return header, [line.split(",") for line in lines]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_archive(tmp_path_factory.mktemp("synth"), SynthConfig(n_images=120, size=64, seed=3))


def test_layout_matches_the_official_data_entry_file(archive):
    header, rows = read_rows(archive.data_entry_csv)
    assert header == HEADER
    assert archive.data_entry_csv.name == "Data_Entry_2017.csv"
    assert all(len(r) == 11 for r in rows)
    files = sorted(p.name for p in archive.image_dir.iterdir())
    assert len(files) == len(rows) == archive.n_images == 120
    assert sorted(r[0] for r in rows) == files
    for name in files[:5]:
        with Image.open(archive.image_dir / name) as im:
            assert (im.mode, im.size) == ("L", (64, 64))
    assert {r[6] for r in rows} <= {"PA", "AP"} and {r[5] for r in rows} <= {"M", "F"}
    assert all(r[7] == r[8] == "64" and float(r[9]) == float(r[10]) > 0 for r in rows)


def test_finding_labels_read_back_as_the_drawn_combinations(archive):
    _, rows = read_rows(archive.data_entry_csv)
    combos = []
    for r in rows:
        findings = parse_finding_labels(r[1])
        assert len(findings) <= MAX_FINDINGS
        assert r[1] == NO_FINDING or r[1].split("|") == sorted(r[1].split("|"))
        combos.append(combination_name(findings_vector(findings)))
    assert Counter(combos) == {c: n for c, n in archive.combination_counts.items() if n}
    assert set(combos) == set(COMBINATIONS)
    assert min(archive.combination_counts.values()) >= 2


def test_patients_have_chronological_follow_ups(archive):
    _, rows = read_rows(archive.data_entry_csv)
    by_patient = defaultdict(list)
    for r in rows:
        assert r[0].startswith(f"{int(r[3]):08d}_")
        by_patient[int(r[3])].append((r[0], int(r[2]), int(r[4]), r[5]))
    assert max(len(v) for v in by_patient.values()) >= 2
    assert len(by_patient) < len(rows)
    for images in by_patient.values():
        images.sort()
        assert [f for _, f, _, _ in images] == list(range(len(images)))
        ages = [a for _, _, a, _ in images]
        assert ages == sorted(ages) and 1 <= ages[0] and ages[-1] <= 95 and ages[-1] - ages[0] <= len(ages)
        assert len({s for *_, s in images}) == 1


def test_combinations_follow_table1_with_a_floor():
    names = draw_combinations(20_000, np.random.default_rng(0), min_per_combination=2)
    counts = Counter(names)
    total = sum(TABLE1_COUNTS.values())
    assert len(names) == 20_000 and set(counts) == set(COMBINATIONS)
    assert min(counts.values()) >= 2
    for name in (NO_FINDING, "Pa", "PaPl"):
        assert abs(counts[name] / 20_000 - TABLE1_COUNTS[name] / total) < 0.02


def test_findings_cover_each_class_once_and_read_back():
    rng = np.random.default_rng(1)
    two_pa = 0
    for name in COMBINATIONS:
        for _ in range(40):
            findings = draw_findings(name, rng)
            assert list(findings) == sorted(findings) and len(findings) <= MAX_FINDINGS
            assert findings_vector(findings).tolist() == combination_vector(name).tolist()
            two_pa += len(findings) > len(name) // 2
    assert two_pa > 0


def test_too_few_images_for_the_floor_is_refused_with_the_minimum():
    with pytest.raises(ValueError, match="minimum is 52"):
        SynthConfig(n_images=51)
    SynthConfig(n_images=26, min_per_combination=1)


def test_an_existing_archive_is_not_overwritten(archive):
    with pytest.raises(FileExistsError):
        write_archive(archive.root, SynthConfig(n_images=26, size=32, min_per_combination=1))


def _pixels(root: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((root / "images").iterdir())}


def test_same_seed_same_bytes_and_pixels_other_seed_differs(tmp_path):
    config = SynthConfig(n_images=30, size=48, seed=11, min_per_combination=1)
    calls = []
    a = write_archive(tmp_path / "a", config, progress=lambda done, total: calls.append((done, total)))
    b = write_archive(tmp_path / "b", config)
    c = write_archive(tmp_path / "c", SynthConfig(n_images=30, size=48, seed=12, min_per_combination=1))
    assert calls == [(i, 30) for i in range(1, 31)]
    assert a.data_entry_csv.read_bytes() == b.data_entry_csv.read_bytes()
    pa, pb = _pixels(a.root), _pixels(b.root)
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert a.data_entry_csv.read_bytes() != c.data_entry_csv.read_bytes()
    pc = _pixels(c.root)
    shared = pa.keys() & pc.keys()
    assert shared and not any(np.array_equal(pa[k], pc[k]) for k in shared)


# --- the signs: the same rng state renders the same chest with and without a class sign --------

SIZE, N = 64, 12
COORD = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1  # image coordinates in [-1, 1]


def _band(lo: float, hi: float) -> np.ndarray:
    return (COORD >= lo) & (COORD < hi)


def _pairs(name: str, findings: tuple[str, ...] = ()) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for i in range(N):
        anatomy = sample_anatomy(np.random.default_rng([8, i]))
        normal = render_scan(np.zeros(5), SIZE, np.random.default_rng([7, i]), anatomy)
        sign = render_scan(combination_vector(name), SIZE, np.random.default_rng([7, i]), anatomy, findings)
        out.append((normal, sign))
    return out


def _heart_width(img: np.ndarray) -> float:
    """Mean width (fraction of the image) of the bright run around the midline on rows above the diaphragm."""
    mid, widths = SIZE // 2, []
    for row in img[_band(0.1, 0.35)]:
        bright = row > 0.5 * (np.percentile(row[np.abs(COORD) < 0.8], 10) + row[mid - 2 : mid + 2].mean())
        left, right = mid, mid
        while left > 0 and bright[left - 1]:
            left -= 1
        while right < SIZE - 1 and bright[right + 1]:
            right += 1
        widths.append((right - left + 1) / SIZE)
    return float(np.mean(widths))


def _base_brightness(img: np.ndarray) -> float:
    return img[_band(0.1, 0.45)][:, (np.abs(COORD) > 0.45) & (np.abs(COORD) < 0.8)].mean()


def _apex_fine_texture(img: np.ndarray) -> float:
    """Median local RMS of the finest detail (vessel markings) in the apical lung, on the quieter side."""
    fine = img - ndimage.gaussian_filter(img, 0.5)
    local = np.sqrt(np.maximum(ndimage.uniform_filter(fine**2, 3), 0))[_band(-0.7, -0.45)]
    return min(np.median(local[:, _band(-0.7, -0.3)]), np.median(local[:, _band(0.3, 0.7)]))


def _lung_brightness(img: np.ndarray) -> float:
    return img[_band(-0.5, 0.2)][:, np.abs(COORD) > 0.3].mean()


def _diffs(name: str, stat, findings: tuple[str, ...] = ()) -> np.ndarray:
    return np.array([stat(sign) - stat(normal) for normal, sign in _pairs(name, findings)])


def test_cardiomegaly_widens_the_heart_shadow():
    d = _diffs("Ca", _heart_width, ("Cardiomegaly",))
    assert (d > 0.02).all() and d.mean() > 0.05  # measured: min 0.033, mean 0.079 of the image width


def test_pleural_signs_brighten_a_lung_base():
    for finding in ("Effusion", "Pleural_Thickening"):
        d = _diffs("Pl", _base_brightness, (finding,))
        # measured: min 0.012, mean 0.09 (effusion), 0.07 (thickening)
        assert (d > 0).all() and d.mean() > 0.04, finding


def test_pneumothorax_removes_fine_markings_at_an_apex():
    d = _diffs("Pn", _apex_fine_texture)
    assert (d < 0).mean() >= 0.8 and d.mean() < -0.001  # measured: 12 of 12 lower, mean -0.002 of ~0.016
    b = _diffs("Pn", _lung_brightness)
    assert (b < 0).mean() >= 0.75 and b.mean() < -0.002  # free air is darker (measured: 10 of 12, mean -0.005)


def test_emphysema_enlarges_and_darkens_the_lungs():
    assert (_diffs("Ot", _lung_brightness, ("Emphysema",)) < -0.02).all()  # measured: -0.034 .. -0.063
    assert (_diffs("Ot", _base_brightness, ("Emphysema",)) < -0.03).all()  # lowered diaphragm: lung at the bases


def test_parenchymal_opacities_brighten_the_lungs_and_nothing_else_moves():
    d = _diffs("Pa", _lung_brightness)
    assert (d >= 0).all() and d.mean() > 0.004  # measured: min 0.0009, mean 0.0095
    outside = _band(-1, -0.9)[:, None] | _band(0.8, 1)[:, None] | (np.abs(COORD) > 0.97)[None, :]
    assert all(np.abs(normal - sign)[outside].max() < 1e-4 for normal, sign in _pairs("Pa"))


def test_render_is_a_grayscale_image_in_range():
    anatomy = sample_anatomy(np.random.default_rng(1))
    img = render_scan(combination_vector("CaPaPl"), 96, np.random.default_rng(0), anatomy)
    assert img.shape == (96, 96) and img.dtype == np.float32
    assert 0 <= img.min() and img.max() <= 1 and img.std() > 0.1


# --- DICOM ------------------------------------------------------------------------------------------


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Stored value -> modality LUT -> window -> [0, 1] with MONOCHROME1 inverted, as a viewer shows it."""
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    low = float(ds.RescaleIntercept)
    high = (2 ** ds.BitsStored - 1) * float(ds.RescaleSlope) + low
    shown = (values - low) / (high - low)
    return 1 - shown if ds.PhotometricInterpretation == "MONOCHROME1" else shown


def test_dicom_archive_displays_like_the_png_archive(tmp_path):
    config = SynthConfig(n_images=30, size=48, seed=5, min_per_combination=1)
    png = write_archive(tmp_path / "png", config)
    dcm = write_archive(tmp_path / "dcm", replace(config, dicom=True))
    assert dcm.data_entry_csv.read_text() == png.data_entry_csv.read_text().replace(".png,", ".dcm,")
    photometric, bits = set(), set()
    for path in sorted(dcm.image_dir.iterdir()):
        ds = pydicom.dcmread(path)
        assert path.suffix == ".dcm" and ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
        assert (ds.RescaleIntercept, ds.RescaleSlope) == (0, 1)  # the DX IOD's only modality LUT
        assert ds.PatientName.family_name == "SYNTHETIC" and ds.PatientID == path.name[:8]
        assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.max() < 2**ds.BitsStored
        photometric.add(ds.PhotometricInterpretation)
        bits.add(ds.BitsStored)
        shown = _display(ds)
        reference = np.asarray(Image.open(png.image_dir / path.with_suffix(".png").name)) / 255.0
        assert np.corrcoef(shown.ravel(), reference.ravel())[0, 1] > 0.99
        assert np.abs(shown - reference).max() < 0.01
    assert photometric == {"MONOCHROME1", "MONOCHROME2"} and bits == {12, 16}
