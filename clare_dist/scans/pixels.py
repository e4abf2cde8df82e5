"""Stored pixel values → 8-bit display values, in memory no larger than the image itself.

A 7000² 16-bit scan is 98 MB; mapping it through float64 temporaries (modality rescale, VOI
window, scaling) would take ~1.2 GB. Integer pixels of up to 16 bits instead go through a lookup
table: the whole chain is evaluated once per possible stored value (65,536 at most) and the
image is then one uint8 gather. Wider integers and float pixel data, which have no small domain,
are mapped a block of rows at a time. Both give exactly the values of the element-wise formula.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from clare_dist.scans.errors import ScanError

BLOCK_ELEMENTS = 1 << 20  # rows per block of the float path: ~8 MB of float64 temporaries
Transform = Callable[[np.ndarray], np.ndarray]


def to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map low..high linearly onto 0..255 (rounded, clipped); a constant range gives zeros."""
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    scaled = (np.asarray(values, np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def scale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """An image with no display window, min-max scaled by its own range."""
    return map_to_uint8(pixels, lambda v: v, None)


def map_to_uint8(pixels: np.ndarray, transform: Transform, window: tuple[float, float] | None,
                 invert: bool = False) -> np.ndarray:
    """`transform` (element-wise: modality LUT, VOI) applied to every pixel, then scaled to 0..255
    by `window` (the transform's output range) or, without one, by the transformed image's
    min-max. `invert` makes MONOCHROME1 bone-bright."""
    if pixels.dtype.kind in "uib" and pixels.dtype.itemsize <= 2:
        return _through_lut(pixels, transform, window, invert)
    return _by_blocks(pixels, transform, window, invert)


def _through_lut(pixels: np.ndarray, transform: Transform, window: tuple[float, float] | None,
                 invert: bool) -> np.ndarray:
    unsigned = np.dtype(f"u{pixels.dtype.itemsize}")
    codes = np.arange(2 ** (8 * pixels.dtype.itemsize), dtype=np.int64).astype(unsigned).view(pixels.dtype)
    values = np.asarray(transform(codes), np.float64)
    if window is None:
        present = (codes >= pixels.min()) & (codes <= pixels.max())
        window = (float(values[present].min()), float(values[present].max()))
    lut = to_uint8(values, *window)
    if invert:
        lut = 255 - lut
    return lut[pixels.view(unsigned)]


def _by_blocks(pixels: np.ndarray, transform: Transform, window: tuple[float, float] | None,
               invert: bool) -> np.ndarray:
    rows = max(1, BLOCK_ELEMENTS // max(1, pixels[0].size)) if pixels.ndim else 1
    blocks = [slice(start, start + rows) for start in range(0, len(pixels), rows)]
    if pixels.dtype.kind == "f":
        for block in blocks:
            if not np.isfinite(pixels[block]).all():
                raise ScanError("bad_pixels", "the float pixel data holds NaN or infinite values, which have no "
                                              "gray level; re-export the scan from its source")
    if window is None:
        lows, highs = zip(*((float(v.min()), float(v.max())) for v in (transform(pixels[b]) for b in blocks)))
        window = (min(lows), max(highs))
    out = np.empty(pixels.shape, np.uint8)
    for block in blocks:
        out[block] = to_uint8(transform(pixels[block]), *window)
    return 255 - out if invert else out
