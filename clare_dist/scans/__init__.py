"""Scan decoding and preprocessing: a PNG, JPEG or DICOM file in, one 8-bit grayscale image out.

Training loaders, the batch job and the HTTP API all go through `preprocess_scan`, with the
preprocessing the bundle names (`preprocessing`), so the model sees the same pixels everywhere. The format is decided from the content, never from the file
name. Whatever the content, the outcome is an image or a `ScanError` for this scan alone: the
known failures carry a specific kind and a message hospital IT can act on, and anything
unexpected is logged with its traceback and becomes kind `internal` (a row, not a failed job).

The parts: `errors` (the error and the limits), `files` (reading regular files only, capped),
`png` (PNG: chunks checked, then libpng), `pillow` (JPEG, and the PNG layouts Pillow converts),
`dicom` (every transfer syntax, header values checked), `pixels` (stored values → 8-bit in bounded memory), `preprocessing` (decoded scan → the
model's input, by name and version).
"""

from __future__ import annotations

import logging
import traceback
from typing import Callable, TypeVar

import numpy as np
from pydicom.dataset import Dataset

from clare_dist.scans.dicom import dicom_header, looks_like_dicom_without_preamble, read_dicom
from clare_dist.scans.errors import SCAN_ERROR_KINDS, ScanConfig, ScanError
from clare_dist.scans.files import ScanSource, load_bytes
from clare_dist.scans.pillow import JPEG_MAGIC, read_pillow
from clare_dist.scans.png import PNG_MAGIC, read_png
from clare_dist.scans.preprocessing import DEFAULT_PREPROCESSING, preprocessing, resize_to

__all__ = ["DEFAULT_PREPROCESSING", "SCAN_ERROR_KINDS", "ScanConfig", "ScanError", "ScanSource", "preprocess_scan",
           "read_dicom_header", "read_scan", "resize_gray", "sniff_format"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_NON_IMAGE_MAGICS = {b"PK\x03\x04": "a ZIP archive", b"%PDF": "a PDF document", b"\x1f\x8b": "a gzip archive",
                     b"GIF8": "a GIF image", b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image", b"BM": "a BMP image"}


def sniff_format(data: bytes) -> str:
    """The scan format from its first bytes: 'png', 'jpeg', 'dicom' or 'unknown'."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[128:132] == b"DICM" or looks_like_dicom_without_preamble(data):
        return "dicom"
    return "unknown"


def read_scan(source: ScanSource, config: ScanConfig = ScanConfig()) -> np.ndarray:
    """Decode a scan to a 2-D uint8 array at the file's own resolution, or raise ScanError."""
    return _guarded(_read, source, config)


def resize_gray(image: np.ndarray, size: int, preprocessing_id: str = DEFAULT_PREPROCESSING) -> np.ndarray:
    """Resize a 2-D uint8 image to size x size as the preprocessing does; non-square scans are squashed."""
    return resize_to(image, size, preprocessing_id)


def preprocess_scan(source: ScanSource, config: ScanConfig = ScanConfig()) -> np.ndarray:
    """Decode a scan and make it the model's square input (config.size, uint8) by config.preprocessing."""
    chosen = config.preprocessing or DEFAULT_PREPROCESSING
    draft = config.size if preprocessing(chosen).jpeg_draft else None
    return _guarded(lambda s, c: resize_to(_read(s, c, draft), c.size, chosen), source, config)


def read_dicom_header(source: ScanSource, config: ScanConfig = ScanConfig()) -> Dataset | None:
    """The DICOM header of a scan (file meta and all but the pixel data), under the same limits and
    failure contract as decoding; None for a PNG or JPEG, which belong to no study."""
    def header(s: ScanSource, c: ScanConfig) -> Dataset | None:
        data = load_bytes(s, c.max_file_bytes)
        return dicom_header(data, c) if data and sniff_format(data) == "dicom" else None

    return _guarded(header, source, config)


def _guarded(work: Callable[[ScanSource, ScanConfig], T], source: ScanSource, config: ScanConfig) -> T:
    """The contract: whatever goes wrong in `work` on this scan is a ScanError for it alone."""
    try:
        return work(source, config)
    except ScanError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure costs this scan only
        # The traceback without the exception's message, which may quote header values.
        log.error("unexpected %s while decoding a scan; it is recorded as kind 'internal':\n%s",
                  type(err).__name__, "".join(traceback.format_tb(err.__traceback__)))
        raise ScanError("internal", f"decoding failed unexpectedly ({type(err).__name__}); the traceback is in the "
                                    "service's log: report it to the clare-dist maintainers with the scan") from err


def _read(source: ScanSource, config: ScanConfig, jpeg_draft: int | None = None) -> np.ndarray:
    """The scan as 2-D uint8; a JPEG at the smallest DCT scale still `jpeg_draft` on each side, if given."""
    data = load_bytes(source, config.max_file_bytes)
    if not data:
        raise ScanError("empty", "the scan is empty (0 bytes); check the export or transfer that produced it and send it again")
    fmt = sniff_format(data)
    if fmt == "unknown":
        raise ScanError("not_an_image", f"the content is {_describe(data)}, not a PNG, JPEG or DICOM scan; send the image "
                                        "file itself (convert other image formats to PNG)")
    image = _decode(data, fmt, config, jpeg_draft)
    if image.size and image.min() == image.max():
        raise ScanError("bad_pixels", f"the scan decodes to one flat gray level ({int(image.flat[0])}) in every pixel: "
                                      "there is nothing to screen; check the export that produced it")
    log.debug("decoded a %s scan of %dx%d pixels", fmt, image.shape[1], image.shape[0])
    return image


def _decode(data: bytes, fmt: str, config: ScanConfig, jpeg_draft: int | None) -> np.ndarray:
    if fmt == "dicom":
        return read_dicom(data, config)
    if fmt == "png":
        image = read_png(data, config)  # None: a layout Pillow converts, its data found complete
        if image is not None:
            return image
    return read_pillow(data, fmt, config, jpeg_draft)


def _describe(data: bytes) -> str:
    """A content hint for error messages that never echoes the bytes (they may hold patient data)."""
    for magic, name in _NON_IMAGE_MAGICS.items():
        if data.startswith(magic):
            return name
    head = data[:1024]
    stripped = head.lstrip()
    if stripped.startswith(b"<svg") or b"<svg" in head[:256]:
        return "an SVG drawing"
    if stripped.startswith(b"<"):
        return "HTML or XML text"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    return "text"
