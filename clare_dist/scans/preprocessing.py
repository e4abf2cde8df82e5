"""The preprocessings a model can be trained with: how a decoded scan becomes the model's input.

A model only answers as validated on input made the way its training input was made, so the
preprocessing has a name and a version (`Preprocessing.id`, e.g. "area/1"); training records it,
the bundle's manifest carries it (`input.preprocessing`), and batch, `predict` and the API decode
every scan with the bundle's (`clare_dist.bundle.Bundle.scan_config`). A run configured with
another is refused rather than run on input the model never saw.

- "area/1" (the default since issue 19): the scan as 8-bit grayscale, resized by area
  averaging (OpenCV's INTER_AREA: every source pixel weighs by the area it covers; bilinear when
  enlarging). A JPEG is decoded by libjpeg straight to the smallest 1/2ᵏ scale that is still at
  least the input side on both axes (Pillow's `draft`), which skips most of its inverse DCT. On
  one core a 1024² 8-bit gray PNG takes ~5 ms (libpng decodes it, `scans.png`), against ~10 ms before.
- "lanczos/1": the scan decoded at full resolution and resized with Pillow's LANCZOS, as every
  bundle before issue 19 was trained. Bundles whose manifest names no preprocessing are these.

Each version is frozen: a change in what the model sees is a new version, never an edit.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from clare_dist.errors import ClareError


@dataclass(frozen=True)
class Preprocessing:
    name: str
    version: int
    description: str
    jpeg_draft: bool  # decode JPEGs at a reduced DCT scale (no smaller than the input side)

    @property
    def id(self) -> str:
        return f"{self.name}/{self.version}"


AREA_V1 = Preprocessing("area", 1, "8-bit grayscale resized by area averaging (OpenCV INTER_AREA); JPEGs decoded "
                                   "at the smallest 1/2^k DCT scale still at least the input side", jpeg_draft=True)
LANCZOS_V1 = Preprocessing("lanczos", 1, "8-bit grayscale at full resolution, resized with Pillow's LANCZOS",
                           jpeg_draft=False)
PREPROCESSINGS: dict[str, Preprocessing] = {p.id: p for p in (AREA_V1, LANCZOS_V1)}
DEFAULT_PREPROCESSING = AREA_V1.id
LEGACY_PREPROCESSING = LANCZOS_V1.id  # bundles and training runs that recorded none


class UnknownPreprocessingError(ClareError, ValueError):
    """A preprocessing id this clare-dist does not have (a newer bundle, or a typo)."""


class PreprocessingMismatchError(ClareError, ValueError):
    """A run configured with another preprocessing than the one its model was trained with."""


def preprocessing(identifier: str) -> Preprocessing:
    """The preprocessing of an id such as "area/1", or UnknownPreprocessingError naming the known ones."""
    try:
        return PREPROCESSINGS[identifier]
    except (KeyError, TypeError):
        raise UnknownPreprocessingError(
            f"unknown scan preprocessing {identifier!r}; this clare-dist has {sorted(PREPROCESSINGS)}. A bundle made "
            "by a newer clare-dist needs that version to run"
        ) from None


def resize_to(image: np.ndarray, size: int, identifier: str = DEFAULT_PREPROCESSING) -> np.ndarray:
    """A 2-D uint8 image resized to size × size as preprocessing `identifier` does (non-square scans are
    squashed, as the paper does)."""
    chosen = preprocessing(identifier)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"resizing takes a 2-D uint8 image; got shape {image.shape} and dtype {image.dtype}")
    if size <= 0:
        raise ValueError(f"size must be positive; got {size}")
    if chosen is LANCZOS_V1:
        return np.array(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))
    if image.shape == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
