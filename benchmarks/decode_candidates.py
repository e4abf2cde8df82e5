"""The ways to turn a scan into the model's 256² input that issue 19 measured, per format, on one thread.

Each candidate is a function of the file's bytes; the two that clare-dist has are its
preprocessings through `preprocess_scan` (container checks, limits and all); the others are the
bare library calls they were chosen among (no checks), to show what each step costs:
Pillow's decode alone, its box `reduce`, `resize(BOX)` and LANCZOS with `reducing_gap`, OpenCV's
decoder and INTER_AREA, libpng through imagecodecs, and for JPEG libjpeg's DCT scaling (`draft`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import cv2
import imagecodecs
import numpy as np
from common import summary_ms
from PIL import Image

from clare_dist.scans import ScanConfig, preprocess_scan, read_scan

SIZE = 256
Candidate = Callable[[bytes], np.ndarray]


def _pillow_l(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("L")


def _area(pixels: np.ndarray) -> np.ndarray:
    return cv2.resize(pixels, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def _gray(decoded: np.ndarray) -> np.ndarray:
    return decoded if decoded.ndim == 2 else cv2.cvtColor(decoded[..., :3], cv2.COLOR_RGB2GRAY)


def _drafted(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (SIZE, SIZE))
        return _area(np.asarray(image.convert("L")))


def candidates(fmt: str) -> dict[str, Candidate]:
    """Name → candidate for one format ('png', 'jpeg' or 'dicom')."""
    found: dict[str, Candidate] = {
        "lanczos/1 (before): preprocess_scan": lambda d: preprocess_scan(d, ScanConfig(size=SIZE, preprocessing="lanczos/1")),
        "area/1 (after): preprocess_scan": lambda d: preprocess_scan(d, ScanConfig(size=SIZE, preprocessing="area/1")),
    }
    if fmt == "dicom":
        found["read_scan alone (pydicom decode, VOI LUT to 8-bit)"] = read_scan
        found["read_scan + cv2 INTER_AREA"] = lambda d: _area(read_scan(d))
        return found
    found |= {
        "Pillow decode alone": lambda d: np.asarray(_pillow_l(d)),
        "Pillow decode + LANCZOS": lambda d: np.asarray(_pillow_l(d).resize((SIZE, SIZE), Image.Resampling.LANCZOS)),
        "Pillow decode + LANCZOS reducing_gap=2": lambda d: np.asarray(
            _pillow_l(d).resize((SIZE, SIZE), Image.Resampling.LANCZOS, reducing_gap=2.0)),
        "Pillow decode + resize(BOX)": lambda d: np.asarray(_pillow_l(d).resize((SIZE, SIZE), Image.Resampling.BOX)),
        "Pillow decode + reduce (integer factor)": lambda d: np.asarray(_reduce(_pillow_l(d))),
        "Pillow decode + cv2 INTER_AREA": lambda d: _area(np.asarray(_pillow_l(d))),
        "cv2.imdecode + INTER_AREA": lambda d: _area(_gray(cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_UNCHANGED))),
    }
    if fmt == "png":
        found["imagecodecs libpng + INTER_AREA"] = lambda d: _area(_gray(imagecodecs.png_decode(d)))
    if fmt == "jpeg":
        found["Pillow draft (DCT scaling) + INTER_AREA"] = _drafted
    return found


def _reduce(image: Image.Image) -> Image.Image:
    return image.reduce((max(1, image.width // SIZE), max(1, image.height // SIZE)))


def time_candidates(data: bytes, fmt: str, repeats: int) -> dict[str, dict]:
    """Each candidate's min/median/p99 over `repeats` calls after one warm-up, in ms."""
    out = {}
    for name, candidate in candidates(fmt).items():
        candidate(data)
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            candidate(data)
            seconds.append(time.perf_counter() - start)
        out[name] = summary_ms(seconds)
    return out
