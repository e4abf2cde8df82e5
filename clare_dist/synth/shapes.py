"""The drawing primitives the anatomy and the signs share: the image grid, soft masks, blobs, noise.

Coordinates are image half-widths (x, y in [-1, 1]); every mask has soft edges, so a sign drawn
at 48 px and at 1024 px is the same picture at another resolution.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel centre of a size x size image; cached, as every scan of a size shares them."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c, c)
    return x, y


def step(z: np.ndarray) -> np.ndarray:
    """Smooth 0 -> 1 transition around z = 0 (soft-edged masks)."""
    return 0.5 * (1 + np.tanh(z))


def blob(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    """Gaussian blob centred at (cx, cy) with radii rx, ry, turned by `angle`."""
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    u, v = (ca * dx + sa * dy) / rx, (-sa * dx + ca * dy) / ry
    return np.exp(-(u * u + v * v))


def side(rng: np.random.Generator) -> float:
    """-1 (image left, the patient's right) or +1, at random."""
    return -1.0 if rng.random() < 0.5 else 1.0


def smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std noise with features about `scale` (in half-widths) across."""
    cells = min(size, max(4, round(2 / scale)))  # drawn coarse and resized: fast at any scale
    n = ndimage.gaussian_filter(rng.standard_normal((cells, cells), dtype=np.float32), sigma=1.0, mode="wrap")
    n = np.asarray(Image.fromarray(n, "F").resize((size, size), Image.Resampling.BICUBIC))
    return n / (n.std() + 1e-6)
