"""The signs of the parenchymal and pleural findings, drawn as opacities that fill lung air.

Each takes (x, y, thorax half-width, apex y, diaphragm y, rng) and returns the share of lung air
it replaces (0..1); `radiograph.render_scan` masks it to the lungs. The signs of the other
findings (cardiomegaly, pneumothorax, emphysema, hernia) change the anatomy itself and are drawn
there.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .shapes import blob, side, smooth_noise, step


def _nodules(x, y, w, apex, base, rng):
    out = np.zeros_like(x)
    for _ in range(rng.integers(1, 5)):
        cx, cy = side(rng) * rng.uniform(0.3, 0.8) * w, rng.uniform(apex + 0.2, base - 0.1)
        r = rng.uniform(0.03, 0.06)
        out += rng.uniform(0.5, 0.8) * step((r - np.hypot(x - cx, y - cy)) / 0.012)
    return out


def _mass(x, y, w, apex, base, rng):
    cx, cy = side(rng) * rng.uniform(0.35, 0.75) * w, rng.uniform(apex + 0.25, base - 0.15)
    r = rng.uniform(0.07, 0.13)
    lobes = 0.15 * r * smooth_noise(rng, x.shape[0], 0.04)
    return rng.uniform(0.6, 0.9) * step((r + lobes - np.hypot(x - cx, y - cy)) / 0.015)


def _patchy(lo: float, hi: float):
    def draw(x, y, w, apex, base, rng):
        cx, cy = side(rng) * rng.uniform(0.3, 0.75) * w, rng.uniform(apex + 0.3, base - 0.05)
        region = blob(x, y, cx, cy, rng.uniform(0.16, 0.3), rng.uniform(0.14, 0.26), rng.uniform(0, np.pi))
        patches = 0.55 + 0.45 * step(smooth_noise(rng, x.shape[0], 0.03) / 0.5)
        return rng.uniform(lo, hi) * region * patches

    return draw


def _atelectasis(x, y, w, apex, base, rng):
    cx, cy = side(rng) * rng.uniform(0.35, 0.7) * w, rng.uniform(base - 0.4, base - 0.08)
    band = blob(x, y, cx, cy, rng.uniform(0.18, 0.3), rng.uniform(0.035, 0.06), rng.normal(0, 0.25))
    return rng.uniform(0.7, 0.95) * band


def _edema(x, y, w, apex, base, rng):
    haze = blob(x, y, -0.25, -0.02, 0.28, 0.34) + blob(x, y, 0.25, -0.02, 0.28, 0.34)
    return rng.uniform(0.45, 0.65) * haze * (1 + 0.3 * smooth_noise(rng, x.shape[0], 0.02))


def _fibrosis(x, y, w, apex, base, rng):
    reticular = np.abs(smooth_noise(rng, x.shape[0], 0.02))
    where = step((np.abs(x) - 0.4 * w) / 0.1) * step((y - rng.uniform(-0.3, 0.1)) / 0.1)
    return rng.uniform(0.2, 0.35) * reticular * where


def _pleural(effusion: bool):
    """Fluid at one or both bases (a meniscus rising to the wall) or a blunted angle with a pleural rind."""

    def draw(x, y, w, apex, base, rng):
        out = np.zeros_like(x)
        for s in [side(rng)] if rng.random() < 0.7 else [-1.0, 1.0]:
            t = np.clip(s * x / w, 0, 1.3)
            if effusion:
                surface = base - rng.uniform(-0.04, 0.22) - rng.uniform(0.1, 0.25) * t**3
            else:
                surface = base + 0.2 - rng.uniform(0.3, 0.45) * step((t - 0.7) / 0.1)
                out += 0.7 * step((t - rng.uniform(0.8, 0.88)) / 0.03)
            out += step((y - surface) / 0.015) * (s * x > 0)
        return out

    return draw


OPACITIES: dict[str, Callable[..., np.ndarray]] = {
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
