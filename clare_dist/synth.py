"""A synthetic ChestX-ray14 archive: the project's embedded default data set.

Real CXR14 images cannot be downloaded everywhere, so the project draws its own archive in the
official layout (`images/PPPPPPPP_FFF.png` + `Data_Entry_2017.csv`), with the paper's Table 1
proportions of the 26 combinations and a visible, learnable sign for every class:

- Ca: an enlarged heart shadow (cardiothoracic ratio above ~0.5).
- Pa: nodules, masses, patchy consolidation, band atelectasis, perihilar haze or reticulation.
- Pn: a pleural line with a dark, markings-free rim at the apex/periphery of one lung.
- Pl: a fluid meniscus or a blunted costophrenic angle at one or both lung bases.
- Ot: hyperinflated lungs (emphysema) or a retrocardiac gas bubble (hernia).

Normal variation (heart size, exposure, rib spacing, a gastric bubble, AP magnification)
overlaps a little with the signs so that the task is learnable but not trivial. Everything is
deterministic for a seed: the same config writes a byte-identical CSV and identical pixels (with
`dicom`, byte-identical DX files: `synth_dicom.py`).
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from .cxr14 import DATA_ENTRY_HEADER, DATA_ENTRY_NAME
from .labels import (
    CLASS_FINDINGS,
    CLASSES,
    COMBINATIONS,
    FINDING_TO_CLASS,
    NO_FINDING,
    TABLE1_COUNTS,
    combination_vector,
)
from .synth_dicom import (
    LOSSY_SYNTAXES,
    TRANSFER_SYNTAXES,
    DXSubject,
    display_to_stored,
    dx_formats,
    encode_dx,
    study_times,
)

log = logging.getLogger(__name__)

# Images carrying each finding in the full CXR14 release: which finding of a class an image gets.
_FINDING_PREVALENCE: dict[str, int] = {
    "Cardiomegaly": 2776, "Infiltration": 19894, "Fibrosis": 1686, "Atelectasis": 11559,
    "Mass": 5782, "Nodule": 6331, "Pneumonia": 1431, "Consolidation": 4667, "Edema": 2303,
    "Pneumothorax": 5302, "Effusion": 13317, "Pleural_Thickening": 3385, "Hernia": 227,
    "Emphysema": 2516,
}
_SECOND_PA_FINDING_P = 0.25  # share of Pa images with two parenchymal findings (when <= 3 in all)


@dataclass(frozen=True)
class SynthConfig:
    """What to draw. `min_per_combination` guarantees that all 26 combinations occur.

    `transfer_syntax` (a key of `synth_dicom.TRANSFER_SYNTAXES`) is how DICOM files are encoded.
    """

    n_images: int
    size: int = 256
    seed: int = 0
    dicom: bool = False
    min_per_combination: int = 2
    images_per_patient_mean: float = 3.0
    transfer_syntax: str = "explicit"

    def __post_init__(self) -> None:
        minimum = len(COMBINATIONS) * self.min_per_combination
        if self.min_per_combination < 0:
            raise ValueError(f"min_per_combination must be >= 0, got {self.min_per_combination}")
        if self.n_images < max(minimum, 1):
            raise ValueError(
                f"n_images={self.n_images} is too small: with min_per_combination={self.min_per_combination} "
                f"every one of the {len(COMBINATIONS)} combinations needs that many images, so the minimum "
                f"is {max(minimum, 1)}; raise n_images or lower min_per_combination"
            )
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels to draw a chest, got {self.size}")
        if self.images_per_patient_mean < 1:
            raise ValueError(f"images_per_patient_mean must be >= 1, got {self.images_per_patient_mean}")
        if self.transfer_syntax not in TRANSFER_SYNTAXES:
            raise ValueError(
                f"unknown transfer_syntax {self.transfer_syntax!r}; choose one of {', '.join(TRANSFER_SYNTAXES)}"
            )
        if self.transfer_syntax != "explicit" and not self.dicom:
            raise ValueError(f"transfer_syntax={self.transfer_syntax!r} applies to DICOM output only; set dicom=True")


@dataclass(frozen=True)
class SynthArchive:
    """Where a written archive lies and what it holds."""

    root: Path
    data_entry_csv: Path
    image_dir: Path
    n_images: int
    combination_counts: dict[str, int]


# ---------------------------------------------------------------------------------------------
# Labels: combinations, findings, patients


def draw_combinations(n: int, rng: np.random.Generator, min_per_combination: int = 2) -> list[str]:
    """`n` combination names in Table 1 proportions, each at least `min_per_combination` times, shuffled.

    Counts are the floor plus a largest-remainder share of the rest, so proportions are exact up to
    rounding rather than subject to multinomial noise; only the order is random.
    """
    floor = len(COMBINATIONS) * min_per_combination
    if n < floor:
        raise ValueError(
            f"{n} images cannot hold {len(COMBINATIONS)} combinations x {min_per_combination}; need >= {floor}"
        )
    weights = np.array([TABLE1_COUNTS[c] for c in COMBINATIONS], dtype=float)
    quota = (n - floor) * weights / weights.sum()
    counts = np.floor(quota).astype(int)
    leftover = n - floor - counts.sum()
    counts[np.argsort(-(quota - counts), kind="stable")[:leftover]] += 1
    names = np.repeat(np.array(COMBINATIONS, dtype=object), counts + min_per_combination)
    return list(rng.permutation(names))


def draw_findings(combination: str, rng: np.random.Generator) -> tuple[str, ...]:
    """CXR14 findings for a combination: one per class (two for Pa now and then), alphabetical."""
    codes = [c for c, bit in zip(CLASSES, combination_vector(combination)) if bit]
    findings: list[str] = []
    for code in codes:
        options = CLASS_FINDINGS[code]
        p = np.array([_FINDING_PREVALENCE[f] for f in options], dtype=float)
        k = 2 if code == "Pa" and len(codes) < 3 and rng.random() < _SECOND_PA_FINDING_P else 1
        findings.extend(str(f) for f in rng.choice(options, size=k, replace=False, p=p / p.sum()))
    return tuple(sorted(findings))


def _patient_sizes(n: int, mean: float, rng: np.random.Generator) -> list[int]:
    """Images per patient (geometric, like CXR14's long tail of follow-ups) summing to n."""
    sizes: list[int] = []
    left = n
    while left > 0:
        sizes.append(min(left, int(rng.geometric(1.0 / mean))))
        left -= sizes[-1]
    return sizes


# ---------------------------------------------------------------------------------------------
# Drawing


@dataclass(frozen=True)
class Anatomy:
    """One patient's body, shared by their follow-ups. Lengths are in image half-widths (x, y in [-1, 1])."""

    thorax: float  # half-width of the rib cage
    body: float  # half-width of the trunk (soft tissue outside the ribs)
    apex: float  # y of the lung apices
    diaphragm: float  # y of the right dome's top (the left one is a little lower)
    dome: float  # height of the diaphragm domes
    ctr: float  # baseline cardiothoracic ratio
    rib_spacing: float
    rib_phase: float
    shoulder: float  # y of the shoulder line
    contrast: float
    exposure: float
    gastric_bubble: bool
    texture_seed: int


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A plausible adult chest; the heart size overlaps the low end of cardiomegaly a little."""
    return Anatomy(
        thorax=rng.uniform(0.64, 0.78),
        body=rng.uniform(0.18, 0.3),
        apex=rng.uniform(-0.76, -0.64),
        diaphragm=rng.uniform(0.30, 0.44),
        dome=rng.uniform(0.14, 0.22),
        ctr=float(np.clip(rng.normal(0.45, 0.025), 0.39, 0.52)),
        rib_spacing=rng.uniform(0.13, 0.16),
        rib_phase=rng.uniform(0, 1),
        shoulder=rng.uniform(-0.86, -0.76),
        contrast=rng.uniform(0.85, 1.15),
        exposure=rng.uniform(-0.04, 0.1),
        gastric_bubble=bool(rng.random() < 0.4),
        texture_seed=int(rng.integers(2**31)),
    )


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c, c)
    return x, y


def _step(z: np.ndarray) -> np.ndarray:
    """Smooth 0 -> 1 transition around z = 0 (soft-edged masks)."""
    return 0.5 * (1 + np.tanh(z))


def _blob(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    """Gaussian blob centred at (cx, cy) with radii rx, ry, turned by `angle`."""
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    u, v = (ca * dx + sa * dy) / rx, (-sa * dx + ca * dy) / ry
    return np.exp(-(u * u + v * v))


def _side(rng: np.random.Generator) -> float:
    """-1 (image left, the patient's right) or +1, at random."""
    return -1.0 if rng.random() < 0.5 else 1.0


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std noise with features about `scale` (in half-widths) across."""
    cells = min(size, max(4, round(2 / scale)))  # drawn coarse and resized: fast at any scale
    n = ndimage.gaussian_filter(rng.standard_normal((cells, cells), dtype=np.float32), sigma=1.0, mode="wrap")
    n = np.asarray(Image.fromarray(n, "F").resize((size, size), Image.Resampling.BICUBIC))
    return n / (n.std() + 1e-6)


def _lung_markings(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Vessel-like streaks radiating from the hila, fading towards the periphery (one patient's pattern)."""
    rng = np.random.default_rng(seed)
    polar = ndimage.gaussian_filter(rng.standard_normal((360, 32), dtype=np.float32), sigma=(1.0, 1.2), mode="wrap")
    polar /= polar.std()  # rows 0-179: the right lung's angles, 180-359: the left's
    warp = _smooth_noise(rng, x.shape[0], 0.1) * 2.0  # bends the streaks like branching vessels
    u, dy = np.abs(x) - 0.05, y + 0.12  # polar coordinates about a point behind the mediastinum
    r = np.hypot(u, dy)
    theta = (np.arctan2(dy, u) / (2 * np.pi) % 1.0) * 180 + warp + 180 * (x > 0)
    coords = np.stack([theta.ravel(), (np.sqrt(r) * 32).ravel()])
    streaks = ndimage.map_coordinates(polar, coords, order=1, mode="grid-wrap").reshape(x.shape)
    return streaks * (0.3 + np.exp(-(((r - 0.15) / 0.35) ** 2))) + 0.3 * _smooth_noise(rng, x.shape[0], 0.01)


def _lung_field(u: np.ndarray, y: np.ndarray, w: float, apex: float, ry: float) -> np.ndarray:
    """Positive inside one lung's outline (u = distance from the midline): rounded apex, near-vertical wall."""
    lat = (u - 0.53 * w) / (0.46 * w)
    vert = (y - apex - ry) / ry
    return 1 - lat**2 - np.where(vert < 0, vert**2, 0.15 * vert**2)


def render_scan(
    vector: np.ndarray,
    size: int,
    rng: np.random.Generator,
    anatomy: Anatomy,
    findings: Sequence[str] = (),
    view: str = "PA",
) -> np.ndarray:
    """A frontal chest radiograph (float32 in [0, 1], size x size, bright = dense) showing the classes of `vector`.

    `findings` picks which sign of a class to draw (Hernia vs Emphysema for Ot, Nodule vs Effusion...);
    a class with none of its findings given gets one drawn at random. The signs draw from their own
    stream, split off `rng` first, so the same `rng` state renders the same radiograph with and
    without a sign (what the tests compare). AP views magnify the heart a little, as real ones do.
    """
    signs = np.random.default_rng(rng.integers(2**63))
    present = [c for c, bit in zip(CLASSES, np.asarray(vector).astype(int)) if bit]
    chosen = [f for f in findings if FINDING_TO_CLASS.get(f) in present]
    for code in present:
        if not any(FINDING_TO_CLASS[f] == code for f in chosen):
            chosen.append(str(signs.choice(CLASS_FINDINGS[code])))
    a = anatomy
    x0, y0 = _grid(size)
    angle = math.radians(rng.normal(0, 1.5))
    dx, dy, zoom = rng.normal(0, 0.02), rng.normal(0, 0.02), rng.uniform(0.96, 1.04)
    x = (math.cos(angle) * x0 + math.sin(angle) * y0 - dx) / zoom
    y = (-math.sin(angle) * x0 + math.cos(angle) * y0 - dy) / zoom
    edge = 2.0 / size + 0.006  # soft edges of about a pixel
    u = np.abs(x)

    # Emphysema: hyperinflation lowers and flattens the diaphragm, widens the chest, darkens the lungs.
    emphysema = "Emphysema" in chosen
    w = a.thorax * (1.04 if emphysema else 1.0)
    base = a.diaphragm + rng.normal(0, 0.02) + (signs.uniform(0.05, 0.15) if emphysema else 0.0)
    dome = a.dome * (signs.uniform(0.2, 0.55) if emphysema else 1.0)
    ry = (base - a.apex) * 0.5

    # Soft tissue of neck, shoulders and trunk, thickest in the middle.
    half = 0.2 + (w + a.body - 0.2) * _step((y - a.shoulder) / 0.12) + 0.08 * np.clip(y, 0, None)
    tissue = 0.4 * np.sqrt(np.clip(1 - (x / half) ** 2, 0, None)) + 0.08 * _step((half - u) / edge)
    tissue *= _step((half - u) / edge) * (1 + 0.08 * _smooth_noise(rng, size, 0.12))

    # Lungs, cut below by the diaphragm domes (the right one higher), which meet the walls in sharp angles.
    dome_top = base + 0.05 * _step(x / edge)
    diaphragm = dome_top + dome * (np.clip(u - 0.45 * w, None, 0.6 * w) / (0.5 * w)) ** 2
    field = _lung_field(u, y, w, a.apex, ry)
    lung = _step(field * (0.46 * w) / (2 * edge)) * _step((diaphragm - y) / edge) * _step((u - 0.06) / edge)
    depth = np.sqrt(np.clip(field, 0, 1))  # more air in the middle of a lung than at its rim

    # Heart: a sheared ellipse resting on the diaphragm, two-thirds on the patient's left (image right).
    ctr = a.ctr + (0.025 if view == "AP" else 0.0) + rng.normal(0, 0.01)
    if "Cardiomegaly" in chosen:
        ctr = signs.uniform(0.53, 0.66)
    rx = ctr * w  # half the heart's width: ctr = heart width / thorax width
    hx, hy, hh = 0.22 * rx, base + 0.04, rng.uniform(0.38, 0.46)  # widest where it meets the diaphragm
    heart = _step((1 - ((x - hx + 0.25 * (y - hy)) / rx) ** 2 - ((y - hy) / hh) ** 2) / 0.05)
    medi = _step((0.085 + 0.025 * _step((y + 0.3) / 0.1) - np.abs(x - 0.02)) / edge) * _step((base - y) / 0.05)
    above = _step((diaphragm - y) / edge)
    solid = np.clip(heart + medi + _blob(x, y, 0.12, a.apex + 0.4, 0.07, 0.05), 0, 1) * above  # + aortic knob
    trachea = _step((0.03 - np.abs(x - 0.01)) / edge) * _step((a.apex + 0.45 - y) / 0.05)

    # Opacities (fluid, consolidation...) fill lung air; a pneumothorax replaces lung with free air.
    fill = np.zeros_like(x)
    for f in chosen:
        if f in _OPACITIES:
            fill = 1 - (1 - fill) * (1 - np.clip(_OPACITIES[f](x, y, w, a.apex, base, signs), 0, 1))
    gap = line = np.zeros_like(x)
    if "Pneumothorax" in chosen:
        s = _side(signs)
        k = signs.uniform(0.6, 0.88)  # the collapsed lung's size relative to the hemithorax
        cx, cy = s * 0.2, 0.0  # it collapses towards the hilum
        inner = _lung_field(np.abs(cx + (x - cx) / k), cy + (y - cy) / k, w, a.apex, ry)
        inner = _step(inner * (0.46 * w * k) / (2 * edge))
        upper = _step((cy + 0.1 - y) / 0.1) * (s * x > 0.02)
        gap = lung * (1 - inner) * upper
        line = 4 * inner * (1 - inner) * upper * lung  # the visceral pleural line

    depth = depth + (1.25 - depth) * gap  # free pleural air: darker than any lung, even its thin rim
    air = (0.34 if emphysema else 0.27) * lung * (1 - solid) * (0.4 + 0.6 * depth) * (1 - fill)
    markings = _lung_markings(x, y, a.texture_seed)
    texture = (0.02 if emphysema else 0.032) * markings * lung * (1 - solid) * (1 - fill) * (1 - gap)

    density = tissue + 0.12 * solid - air + texture - 0.08 * trachea + 0.1 * line
    abdomen = (1 - above) * _step((half - u) / edge)
    density += 0.22 * abdomen * (0.4 + 0.6 * _step((w - u) / 0.1))
    if a.gastric_bubble:
        density -= 0.22 * _blob(x, y, 0.4, base + 0.14 + dome, 0.1, 0.06) * abdomen
    if "Hernia" in chosen:  # a retrocardiac gas bubble with a fluid level
        bx, by, br = signs.uniform(0.0, 0.15), base - signs.uniform(0.08, 0.16), signs.uniform(0.07, 0.11)
        bubble = _step((br - np.hypot(x - bx, (y - by) * 1.2)) / edge)
        density -= 0.25 * bubble * _step((by + signs.uniform(-0.02, 0.04) - y) / edge)
    density += _bones(x, y, w, a, base, edge, rng) * (1 - 0.7 * gap)  # bone detail burns out in free air
    density += rng.normal(0, 0.01, density.shape).astype(np.float32)  # quantum noise

    # Film-like characteristic curve; its toe flattens contrast in the darkest (most exposed) areas.
    toe = 0.04 * np.logaddexp(0, (density - 0.12) / 0.04)
    gain = 2.6 * a.contrast * rng.uniform(0.95, 1.05)
    img = 1 - np.exp(-gain * toe) + a.exposure + rng.normal(0, 0.015) + 0.04 * y  # + heel effect
    img = ndimage.gaussian_filter(img, sigma=0.5 * size / 256)
    img += rng.normal(0, 0.008, img.shape).astype(np.float32)  # film grain
    return np.clip(img, 0, 1).astype(np.float32)


def _bones(
    x: np.ndarray, y: np.ndarray, w: float, a: Anatomy, base: float, edge: float, rng: np.random.Generator
) -> np.ndarray:
    """Ribs (posterior arcs, fainter anterior ones), spine and clavicles."""
    u = np.abs(x)
    t = np.clip(u / w, 0, 1.3)
    ribcage = _step((1.04 * w - u) / 0.02) * _step((y - a.apex + 0.1) / 0.04) * _step((base + 0.2 - y) / 0.06)
    # Posterior ribs leave the spine level, then bend down laterally; spacing widens caudally.
    v = y - a.apex + 0.1 - (-0.12 * t + 0.5 * t**2.5)
    p = np.cos(2 * np.pi * ((v + 0.15 * v**2) / a.rib_spacing + a.rib_phase))
    post = (_step((p - 0.5) / 0.12) - 0.4 * _step((p - 0.85) / 0.06)) * _step((u - 0.07) / 0.02)
    # Anterior ribs run down towards the sternum from the lateral wall and fade medially.
    va = y - a.apex - 0.3 * (1 - t)
    pa = np.cos(2 * np.pi * (va / (a.rib_spacing * 1.15) + a.rib_phase * 0.7))
    ant = _step((pa - 0.5) / 0.15) * _step((t - 0.35) / 0.1)
    ribs = (0.07 * post + 0.015 * ant) * ribcage
    verts = 0.8 + 0.2 * np.cos(2 * np.pi * y / (a.rib_spacing * 0.85))
    spine = 0.09 * verts * _step((0.055 - np.abs(x + 0.01)) / edge)
    tc = np.clip((u - 0.06) / 0.6, 0, 1)
    yc = a.apex + 0.04 - 0.13 * tc + 0.05 * np.sin(np.pi * tc) + rng.normal(0, 0.01)
    clavicles = 0.2 * np.exp(-(((y - yc) / 0.032) ** 2)) * _step((u - 0.06) / 0.02) * _step((0.68 - u) / 0.03)
    return ribs + spine + clavicles


# Opacities: each takes (x, y, thorax half-width, apex y, diaphragm y, rng) and returns the share of
# lung air it replaces (0..1); render_scan masks it to the lungs.


def _nodules(x, y, w, apex, base, rng):
    out = np.zeros_like(x)
    for _ in range(rng.integers(1, 5)):
        cx, cy = _side(rng) * rng.uniform(0.3, 0.8) * w, rng.uniform(apex + 0.2, base - 0.1)
        r = rng.uniform(0.03, 0.06)
        out += rng.uniform(0.5, 0.8) * _step((r - np.hypot(x - cx, y - cy)) / 0.012)
    return out


def _mass(x, y, w, apex, base, rng):
    cx, cy = _side(rng) * rng.uniform(0.35, 0.75) * w, rng.uniform(apex + 0.25, base - 0.15)
    r = rng.uniform(0.07, 0.13)
    lobes = 0.15 * r * _smooth_noise(rng, x.shape[0], 0.04)
    return rng.uniform(0.6, 0.9) * _step((r + lobes - np.hypot(x - cx, y - cy)) / 0.015)


def _patchy(lo: float, hi: float):
    def draw(x, y, w, apex, base, rng):
        cx, cy = _side(rng) * rng.uniform(0.3, 0.75) * w, rng.uniform(apex + 0.3, base - 0.05)
        region = _blob(x, y, cx, cy, rng.uniform(0.16, 0.3), rng.uniform(0.14, 0.26), rng.uniform(0, np.pi))
        patches = 0.55 + 0.45 * _step(_smooth_noise(rng, x.shape[0], 0.03) / 0.5)
        return rng.uniform(lo, hi) * region * patches

    return draw


def _atelectasis(x, y, w, apex, base, rng):
    cx, cy = _side(rng) * rng.uniform(0.35, 0.7) * w, rng.uniform(base - 0.4, base - 0.08)
    band = _blob(x, y, cx, cy, rng.uniform(0.18, 0.3), rng.uniform(0.035, 0.06), rng.normal(0, 0.25))
    return rng.uniform(0.7, 0.95) * band


def _edema(x, y, w, apex, base, rng):
    haze = _blob(x, y, -0.25, -0.02, 0.28, 0.34) + _blob(x, y, 0.25, -0.02, 0.28, 0.34)
    return rng.uniform(0.45, 0.65) * haze * (1 + 0.3 * _smooth_noise(rng, x.shape[0], 0.02))


def _fibrosis(x, y, w, apex, base, rng):
    reticular = np.abs(_smooth_noise(rng, x.shape[0], 0.02))
    where = _step((np.abs(x) - 0.4 * w) / 0.1) * _step((y - rng.uniform(-0.3, 0.1)) / 0.1)
    return rng.uniform(0.2, 0.35) * reticular * where


def _pleural(effusion: bool):
    """Fluid at one or both bases (a meniscus rising to the wall) or a blunted angle with a pleural rind."""

    def draw(x, y, w, apex, base, rng):
        out = np.zeros_like(x)
        for s in [_side(rng)] if rng.random() < 0.7 else [-1.0, 1.0]:
            t = np.clip(s * x / w, 0, 1.3)
            if effusion:
                surface = base - rng.uniform(-0.04, 0.22) - rng.uniform(0.1, 0.25) * t**3
            else:
                surface = base + 0.2 - rng.uniform(0.3, 0.45) * _step((t - 0.7) / 0.1)
                out += 0.7 * _step((t - rng.uniform(0.8, 0.88)) / 0.03)
            out += _step((y - surface) / 0.015) * (s * x > 0)
        return out

    return draw


_OPACITIES: dict[str, Callable[..., np.ndarray]] = {
    "Nodule": _nodules,
    "Mass": _mass,
    "Infiltration": _patchy(0.5, 0.75),
    "Pneumonia": _patchy(0.55, 0.8),
    "Consolidation": _patchy(0.7, 0.95),
    "Atelectasis": _atelectasis,
    "Edema": _edema,
    "Fibrosis": _fibrosis,
    "Effusion": _pleural(effusion=True),
    "Pleural_Thickening": _pleural(effusion=False),
}


# ---------------------------------------------------------------------------------------------
# Writing the archive


def write_archive(
    out_dir: str | Path, config: SynthConfig, progress: Callable[[int, int], None] | None = None
) -> SynthArchive:
    """Draw `config.n_images` scans into `out_dir/images/` and their labels into `out_dir/Data_Entry_2017.csv`.

    Labels, anatomy and pixels each come from their own seeded stream, so the PNG and DICOM
    archives of one seed hold the same pictures. The CSV is written last, under its final name only
    once complete, so a half-written archive is never mistaken for a finished one.
    `progress(done, total)` is called after every image.
    """
    root = Path(out_dir)
    image_dir = root / "images"
    csv_path = root / DATA_ENTRY_NAME
    if csv_path.exists() or (image_dir.is_dir() and any(image_dir.iterdir())):
        raise FileExistsError(
            f"{root} already holds an archive; write into an empty or new directory, or delete it first"
        )
    image_dir.mkdir(parents=True, exist_ok=True)
    seed, n = config.seed, config.n_images
    labels_rng = np.random.default_rng([seed, 0])
    combos = draw_combinations(n, labels_rng, config.min_per_combination)
    sizes = _patient_sizes(n, config.images_per_patient_mean, labels_rng)
    formats = dx_formats(n, np.random.default_rng([seed, 3])) if config.dicom else []
    ext = ".dcm" if config.dicom else ".png"
    log.info("writing %d synthetic scans of %d patients (%d px, %s) to %s", n, len(sizes), config.size, ext, root)

    rows = [DATA_ENTRY_HEADER]
    i = 0
    for patient, count in enumerate(sizes, start=1):
        anatomy = sample_anatomy(np.random.default_rng([seed, 1, patient]))
        sex = "M" if labels_rng.random() < 0.56 else "F"
        visits = _draw_visits(combos[i : i + count], int(np.clip(labels_rng.normal(47, 17), 2, 90)), labels_rng)
        if config.dicom:
            birth, times = study_times([age for _, _, age in visits], np.random.default_rng([seed, 4, patient]))
        for follow_up, (findings, view, age) in enumerate(visits):
            spacing = 0.139 if view == "AP" else 0.143
            img = render_scan(
                combination_vector(combos[i]), config.size, np.random.default_rng([seed, 2, i]), anatomy, findings, view
            )
            name = f"{patient:08d}_{follow_up:03d}{ext}"
            if config.dicom:
                subject = DXSubject.synthetic(
                    ["clare-dist-synth", str(seed)], patient, follow_up, sex, birth, times[follow_up], view, spacing,
                    variant=config.transfer_syntax if config.transfer_syntax in LOSSY_SYNTAXES else "",
                )
                photometric, bits = formats[i]
                stored, window = display_to_stored(img, bits, photometric)
                data = encode_dx(stored, bits, photometric, config.transfer_syntax, window=window, subject=subject)
                (image_dir / name).write_bytes(data)
            else:
                Image.fromarray(np.round(img * 255).astype(np.uint8), "L").save(image_dir / name)
            labels = "|".join(findings) or NO_FINDING
            size = config.size
            rows.append(f"{name},{labels},{follow_up},{patient},{age},{sex},{view},{size},{size},{spacing},{spacing}")
            i += 1
            if progress is not None:
                progress(i, n)
            if i % max(1, n // 10) == 0:
                log.info("%d/%d scans written", i, n)

    tmp = csv_path.with_suffix(".csv.tmp")
    tmp.write_text("\n".join(rows) + "\n")
    tmp.replace(csv_path)
    counts = {c: 0 for c in COMBINATIONS}
    for c in combos:
        counts[c] += 1
    return SynthArchive(root=root, data_entry_csv=csv_path, image_dir=image_dir, n_images=n, combination_counts=counts)


def _draw_visits(combos: Sequence[str], age: int, rng: np.random.Generator) -> list[tuple[tuple[str, ...], str, int]]:
    """(findings, view, age) of one patient's follow-ups; the age rises by 0 or 1 year between them.

    All of a patient's labels are drawn before their scans are written, so that a DICOM study's
    date can be placed in the right year of life; the draws stay in the order of the CSV's rows.
    """
    visits = []
    for combo in combos:
        findings = draw_findings(combo, rng)
        view = "AP" if rng.random() < 0.4 else "PA"
        visits.append((findings, view, age))
        age = min(95, age + int(rng.integers(0, 2)))
    return visits


def write_broken_scans(directory: str | os.PathLike) -> list[Path]:
    """A few files of the kinds a real backlog holds by mistake, for the demo's screening run.

    Each must come out of a batch run as a row with status=error and its reason, not stop it.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    whole = buffer.getvalue()
    files = {
        "99990001_000.png": b"",
        "99990002_000.png": whole[: len(whole) // 2],
        "99990003_000.png": b"transfer log: 12 files sent\n",
        "99990004_000.dcm": b"\0" * 128 + b"DICM" + b"\0" * 64,
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    return [out / name for name in files]
