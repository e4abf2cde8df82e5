"""Scans the model should not judge: the out-of-distribution set the "needs human review" flag is
measured on, made from in-distribution scans as the model sees them (S×S uint8).

Each kind is a way a file in a real archive can be unlike the training archive while still
decoding to an image: a film turned 90° or stored inverted, an unexposed (nearly blank) or
burnt-out (nearly saturated) exposure, a heavy crop of a small part of the chest, and things that
are no radiograph at all: noise, a smooth gradient, a natural-looking texture. Blank and saturated
keep a faint noise, because a perfectly flat image never reaches the model (the decoder refuses
it as `bad_pixels`). Deterministic for a seed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from .shapes import smooth_noise

CROP_SHARE = 0.3  # a heavy crop keeps this share of each side, around a random centre


def _rotated(scan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.rot90(scan, k=1 if rng.random() < 0.5 else 3).copy()


def _inverted(scan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 255 - scan


def _faint(level: int, scan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(level + rng.normal(0, 2, scan.shape), 0, 255).astype(np.uint8)


def _cropped(scan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = scan.shape[0]
    side = max(4, round(size * CROP_SHARE))
    top, left = rng.integers(0, size - side + 1, size=2)
    patch = Image.fromarray(scan[top : top + side, left : left + side])
    return np.asarray(patch.resize((size, size), Image.Resampling.LANCZOS))


def _noise(scan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, scan.shape, dtype=np.uint8)


def _gradient(scan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = scan.shape[0]
    angle = rng.uniform(0, 2 * np.pi)
    c = np.linspace(-1, 1, size)
    x, y = np.meshgrid(c, c)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    return np.round(255 * (ramp - ramp.min()) / (ramp.max() - ramp.min())).astype(np.uint8)


def _texture(scan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Clouds, bark, gravel: noise over several scales, as natural images have (about 1/f)."""
    size = scan.shape[0]
    layers = sum(smooth_noise(rng, size, scale) * scale for scale in (0.8, 0.4, 0.2, 0.1, 0.05))
    return np.round(255 * (layers - layers.min()) / (layers.max() - layers.min())).astype(np.uint8)


OUTLIER_KINDS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "rotated_90": _rotated,
    "inverted": _inverted,
    "blank": lambda scan, rng: _faint(4, scan, rng),
    "saturated": lambda scan, rng: _faint(251, scan, rng),
    "heavy_crop": _cropped,
    "noise": _noise,
    "gradient": _gradient,
    "texture": _texture,
}


def outliers(scans: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Every kind of outlier made of N in-distribution scans (N×S×S uint8): {kind: N×S×S uint8}."""
    scans = np.asarray(scans)
    if scans.ndim != 3 or scans.dtype != np.uint8 or scans.shape[1] != scans.shape[2]:
        raise ValueError(f"outliers are made of N×S×S uint8 scans; got {scans.dtype} {scans.shape}")
    made = {}
    for i, (kind, make) in enumerate(OUTLIER_KINDS.items()):
        rng = np.random.default_rng([seed, i])
        made[kind] = np.stack([make(scan, rng) for scan in scans]) if len(scans) else scans.copy()
    return made
