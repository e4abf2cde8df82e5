"""One synthetic frontal chest radiograph: a patient's anatomy, the signs of their findings, the film.

Normal variation (heart size, exposure, rib spacing, a gastric bubble, AP magnification)
overlaps a little with the signs, so that the task is learnable but not trivial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..labels import CLASS_FINDINGS, CLASSES, FINDING_TO_CLASS
from .shapes import blob, grid, side, smooth_noise, step
from .signs import OPACITIES


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


def _lung_markings(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Vessel-like streaks radiating from the hila, fading towards the periphery (one patient's pattern)."""
    rng = np.random.default_rng(seed)
    polar = ndimage.gaussian_filter(rng.standard_normal((360, 32), dtype=np.float32), sigma=(1.0, 1.2), mode="wrap")
    polar /= polar.std()  # rows 0-179: the right lung's angles, 180-359: the left's
    warp = smooth_noise(rng, x.shape[0], 0.1) * 2.0  # bends the streaks like branching vessels
    u, dy = np.abs(x) - 0.05, y + 0.12  # polar coordinates about a point behind the mediastinum
    r = np.hypot(u, dy)
    theta = (np.arctan2(dy, u) / (2 * np.pi) % 1.0) * 180 + warp + 180 * (x > 0)
    coords = np.stack([theta.ravel(), (np.sqrt(r) * 32).ravel()])
    streaks = ndimage.map_coordinates(polar, coords, order=1, mode="grid-wrap").reshape(x.shape)
    return streaks * (0.3 + np.exp(-(((r - 0.15) / 0.35) ** 2))) + 0.3 * smooth_noise(rng, x.shape[0], 0.01)


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
    x0, y0 = grid(size)
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
    half = 0.2 + (w + a.body - 0.2) * step((y - a.shoulder) / 0.12) + 0.08 * np.clip(y, 0, None)
    tissue = 0.4 * np.sqrt(np.clip(1 - (x / half) ** 2, 0, None)) + 0.08 * step((half - u) / edge)
    tissue *= step((half - u) / edge) * (1 + 0.08 * smooth_noise(rng, size, 0.12))

    # Lungs, cut below by the diaphragm domes (the right one higher), which meet the walls in sharp angles.
    dome_top = base + 0.05 * step(x / edge)
    diaphragm = dome_top + dome * (np.clip(u - 0.45 * w, None, 0.6 * w) / (0.5 * w)) ** 2
    field = _lung_field(u, y, w, a.apex, ry)
    lung = step(field * (0.46 * w) / (2 * edge)) * step((diaphragm - y) / edge) * step((u - 0.06) / edge)
    depth = np.sqrt(np.clip(field, 0, 1))  # more air in the middle of a lung than at its rim

    # Heart: a sheared ellipse resting on the diaphragm, two-thirds on the patient's left (image right).
    ctr = a.ctr + (0.025 if view == "AP" else 0.0) + rng.normal(0, 0.01)
    if "Cardiomegaly" in chosen:
        ctr = signs.uniform(0.53, 0.66)
    rx = ctr * w  # half the heart's width: ctr = heart width / thorax width
    hx, hy, hh = 0.22 * rx, base + 0.04, rng.uniform(0.38, 0.46)  # widest where it meets the diaphragm
    heart = step((1 - ((x - hx + 0.25 * (y - hy)) / rx) ** 2 - ((y - hy) / hh) ** 2) / 0.05)
    medi = step((0.085 + 0.025 * step((y + 0.3) / 0.1) - np.abs(x - 0.02)) / edge) * step((base - y) / 0.05)
    above = step((diaphragm - y) / edge)
    solid = np.clip(heart + medi + blob(x, y, 0.12, a.apex + 0.4, 0.07, 0.05), 0, 1) * above  # + aortic knob
    trachea = step((0.03 - np.abs(x - 0.01)) / edge) * step((a.apex + 0.45 - y) / 0.05)

    # Opacities (fluid, consolidation...) fill lung air; a pneumothorax replaces lung with free air.
    fill = np.zeros_like(x)
    for f in chosen:
        if f in OPACITIES:
            fill = 1 - (1 - fill) * (1 - np.clip(OPACITIES[f](x, y, w, a.apex, base, signs), 0, 1))
    gap = line = np.zeros_like(x)
    if "Pneumothorax" in chosen:
        s = side(signs)
        k = signs.uniform(0.6, 0.88)  # the collapsed lung's size relative to the hemithorax
        cx, cy = s * 0.2, 0.0  # it collapses towards the hilum
        inner = _lung_field(np.abs(cx + (x - cx) / k), cy + (y - cy) / k, w, a.apex, ry)
        inner = step(inner * (0.46 * w * k) / (2 * edge))
        upper = step((cy + 0.1 - y) / 0.1) * (s * x > 0.02)
        gap = lung * (1 - inner) * upper
        line = 4 * inner * (1 - inner) * upper * lung  # the visceral pleural line

    depth = depth + (1.25 - depth) * gap  # free pleural air: darker than any lung, even its thin rim
    air = (0.34 if emphysema else 0.27) * lung * (1 - solid) * (0.4 + 0.6 * depth) * (1 - fill)
    markings = _lung_markings(x, y, a.texture_seed)
    texture = (0.02 if emphysema else 0.032) * markings * lung * (1 - solid) * (1 - fill) * (1 - gap)

    density = tissue + 0.12 * solid - air + texture - 0.08 * trachea + 0.1 * line
    abdomen = (1 - above) * step((half - u) / edge)
    density += 0.22 * abdomen * (0.4 + 0.6 * step((w - u) / 0.1))
    if a.gastric_bubble:
        density -= 0.22 * blob(x, y, 0.4, base + 0.14 + dome, 0.1, 0.06) * abdomen
    if "Hernia" in chosen:  # a retrocardiac gas bubble with a fluid level
        bx, by, br = signs.uniform(0.0, 0.15), base - signs.uniform(0.08, 0.16), signs.uniform(0.07, 0.11)
        bubble = step((br - np.hypot(x - bx, (y - by) * 1.2)) / edge)
        density -= 0.25 * bubble * step((by + signs.uniform(-0.02, 0.04) - y) / edge)
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
    ribcage = step((1.04 * w - u) / 0.02) * step((y - a.apex + 0.1) / 0.04) * step((base + 0.2 - y) / 0.06)
    # Posterior ribs leave the spine level, then bend down laterally; spacing widens caudally.
    v = y - a.apex + 0.1 - (-0.12 * t + 0.5 * t**2.5)
    p = np.cos(2 * np.pi * ((v + 0.15 * v**2) / a.rib_spacing + a.rib_phase))
    post = (step((p - 0.5) / 0.12) - 0.4 * step((p - 0.85) / 0.06)) * step((u - 0.07) / 0.02)
    # Anterior ribs run down towards the sternum from the lateral wall and fade medially.
    va = y - a.apex - 0.3 * (1 - t)
    pa = np.cos(2 * np.pi * (va / (a.rib_spacing * 1.15) + a.rib_phase * 0.7))
    ant = step((pa - 0.5) / 0.15) * step((t - 0.35) / 0.1)
    ribs = (0.07 * post + 0.015 * ant) * ribcage
    verts = 0.8 + 0.2 * np.cos(2 * np.pi * y / (a.rib_spacing * 0.85))
    spine = 0.09 * verts * step((0.055 - np.abs(x + 0.01)) / edge)
    tc = np.clip((u - 0.06) / 0.6, 0, 1)
    yc = a.apex + 0.04 - 0.13 * tc + 0.05 * np.sin(np.pi * tc) + rng.normal(0, 0.01)
    clavicles = 0.2 * np.exp(-(((y - yc) / 0.032) ** 2)) * step((u - 0.06) / 0.02) * step((0.68 - u) / 0.03)
    return ribs + spine + clavicles
