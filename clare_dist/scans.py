"""Scan decoding and preprocessing: a PNG, JPEG or DICOM file in, one 8-bit grayscale image out.

Training loaders, the batch job and the HTTP API all go through `read_scan`, so the model sees
the same pixels everywhere. Bad input raises one exception, `ScanError`, whose `kind` lets the
batch job record the failure and go on and lets the API answer 4xx; its message tells hospital
IT what is wrong and what to do. The format is decided from the content, never from the file
name, and image sizes are checked from the header before any pixel is decoded.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

log = logging.getLogger(__name__)

SCAN_ERROR_KINDS: tuple[str, ...] = (
    "empty",
    "truncated",
    "not_an_image",
    "no_pixel_data",
    "too_many_pixels",
    "unsupported",
    "unreadable",
)

ScanSource = bytes | bytearray | memoryview | str | os.PathLike

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# Resampling filter of every resize: the sample archive was downscaled with LANCZOS, and it is
# Pillow's sharpest antialiasing filter, which keeps small findings (nodules, thin lines) visible.
RESAMPLE = Image.Resampling.LANCZOS

_DICOM_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422")
_NON_IMAGE_MAGICS = {b"PK\x03\x04": "a ZIP archive", b"%PDF": "a PDF document", b"\x1f\x8b": "a gzip archive"}


class ScanError(ValueError):
    """A scan that cannot be turned into an image; `kind` (one of SCAN_ERROR_KINDS) says why."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in SCAN_ERROR_KINDS:
            raise ValueError(f"unknown ScanError kind {kind!r}; expected one of {SCAN_ERROR_KINDS}")
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __reduce__(self):
        # Ray ships exceptions between processes by pickling; the default would call cls(message).
        return type(self), (self.kind, self.message)


@dataclass(frozen=True)
class ScanConfig:
    """Preprocessing settings; the defaults reproduce the paper's 256x256 inputs."""

    size: int = 256
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        for name in ("size", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ScanConfig.{name} must be a positive integer; got {value!r}")


def sniff_format(data: bytes) -> str:
    """The scan format from its first bytes: 'png', 'jpeg', 'dicom' or 'unknown'."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[128:132] == b"DICM" or _is_dicom_without_preamble(data):
        return "dicom"
    return "unknown"


def read_scan(source: ScanSource, max_pixels: int = ScanConfig.max_pixels) -> np.ndarray:
    """Decode a scan to a 2-D uint8 array at the file's own resolution, or raise ScanError."""
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive; got {max_pixels}")
    data = _load_bytes(source)
    if not data:
        raise ScanError(
            "empty", "the scan is empty (0 bytes); check the export or transfer that produced it and send it again"
        )
    fmt = sniff_format(data)
    if fmt == "unknown":
        raise ScanError(
            "not_an_image",
            f"the content is {_describe(data)}, not a PNG, JPEG or DICOM scan; send the image file itself "
            "(convert other image formats to PNG)",
        )
    image = _read_dicom(data, max_pixels) if fmt == "dicom" else _read_pillow(data, fmt, max_pixels)
    log.debug("decoded a %s scan of %dx%d pixels", fmt, image.shape[1], image.shape[0])
    return image


def resize_gray(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 image to size x size; non-square scans are squashed, as the paper does."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"resize_gray takes a 2-D uint8 image; got shape {image.shape} and dtype {image.dtype}")
    if size <= 0:
        raise ValueError(f"size must be positive; got {size}")
    return np.array(Image.fromarray(image).resize((size, size), RESAMPLE))


def preprocess_scan(source: ScanSource, config: ScanConfig = ScanConfig()) -> np.ndarray:
    """Decode a scan and resize it to the model's square input (config.size), as uint8."""
    return resize_gray(read_scan(source, config.max_pixels), config.size)


def _load_bytes(source: ScanSource) -> bytes:
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                return f.read()
        except OSError as err:
            raise ScanError(
                "unreadable",
                f"cannot read the scan file {os.fspath(source)!r}: {err.strerror or err}; "
                "check that the path exists and that this service may read it",
            ) from err
    return bytes(source)


def _check_pixels(width: int, height: int, frames: int, max_pixels: int) -> None:
    pixels = width * height * frames
    if pixels > max_pixels:
        shape = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
        raise ScanError(
            "too_many_pixels",
            f"the scan header declares {shape} = {pixels:,} pixels, over the limit of {max_pixels:,} "
            "that guards against decompression bombs; if the scan is genuine, raise ScanConfig.max_pixels",
        )


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map low..high linearly onto 0..255; a constant image (high <= low) becomes zeros."""
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _describe(data: bytes) -> str:
    """A content hint for error messages that never echoes the bytes (they may hold patient data)."""
    for magic, name in _NON_IMAGE_MAGICS.items():
        if data.startswith(magic):
            return name
    head = data[:1024]
    if head.lstrip().startswith(b"<"):
        return "HTML or XML text"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    return "text"


def _read_pillow(data: bytes, fmt: str, max_pixels: int) -> np.ndarray:
    name = fmt.upper()
    try:
        image = Image.open(BytesIO(data), formats=[name])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ScanError(
            "too_many_pixels",
            f"the {name} header declares more pixels than Pillow's decompression-bomb guard allows ({err}); "
            "downscale a genuine scan this large before screening",
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, struct.error) as err:
        # The magic bytes matched, so a header Pillow cannot parse means a damaged or cut file.
        raise ScanError(
            "truncated", f"the {name} header is cut short or corrupt; re-export or copy the scan again"
        ) from err
    with image:
        _check_pixels(image.width, image.height, 1, max_pixels)
        try:
            image.load()
        except (OSError, SyntaxError, EOFError, struct.error, zlib.error, ValueError) as err:
            raise ScanError(
                "truncated", f"the {name} pixel data is cut short or corrupt ({err}); re-export or copy the scan again"
            ) from err
        ImageOps.exif_transpose(image, in_place=True)
        if image.mode.startswith("I") or image.mode == "F":
            # 16-bit files carry no display window, so the image's own range is the only one known;
            # a fixed /257 would leave 10-12-bit data (the usual X-ray depth) nearly black.
            values = np.asarray(image)
            return _scale_to_uint8(values, float(values.min()), float(values.max()))
        try:
            return np.array(image.convert("L"))
        except ValueError as err:
            raise ScanError(
                "unsupported",
                f"{name} pixel mode {image.mode!r} cannot be made grayscale; save the scan as 8-bit grayscale",
            ) from err


def _is_dicom_without_preamble(data: bytes) -> bool:
    """A DICOM dataset with no 128-byte preamble, as older systems write it.

    Its first element is from group 0x0002 (file meta) or 0x0008 (which holds SOP Class UID);
    forced parsing of anything else is skipped, and a parse only counts if it finds image or
    SOP attributes, so text that happens to parse as tags is not taken for DICOM.
    """
    if data[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True, stop_before_pixels=True)
        return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)
    except Exception:  # pydicom can fail in many ways on arbitrary bytes; each means "not DICOM"
        return False


def _read_dicom(data: bytes, max_pixels: int) -> np.ndarray:
    # Parsing only copies the (possibly compressed) pixel bytes, bounded by the file size; the
    # expansion a decompression bomb relies on happens at decoding, after the size check.
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True)
    except Exception as err:  # any parse failure of a file that announced itself as DICOM
        raise ScanError(
            "truncated", f"the DICOM file is cut short or corrupt ({type(err).__name__}); copy it again"
        ) from err
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ScanError(
            "no_pixel_data",
            "the DICOM file has no Pixel Data: it is not an image object (e.g. a structured report) "
            "or it was cut short; send the image instance of the study",
        )
    frames = int(ds.get("NumberOfFrames") or 1)
    _check_pixels(int(ds.get("Columns") or 0), int(ds.get("Rows") or 0), frames, max_pixels)
    _check_dicom_supported(ds)
    try:
        pixels = pixel_array(ds, index=0)  # a multi-frame scan is read by its first frame
    except Exception as err:  # pydicom's decoders raise ValueError, RuntimeError, ... on bad data
        raise ScanError(
            "truncated", f"the DICOM pixel data is cut short or corrupt ({err}); re-export or copy the scan again"
        ) from err
    if pixels.ndim == 3:
        return np.array(Image.fromarray(pixels, "RGB").convert("L"))
    return _dicom_gray_to_uint8(pixels, ds)


def _check_dicom_supported(ds: pydicom.Dataset) -> None:
    if "TransferSyntaxUID" not in ds.file_meta:  # a dataset without file meta: its encoding says it
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = syntax
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise ScanError(
            "unsupported",
            f"DICOM transfer syntax {syntax} ({syntax.name}) has no decoder; re-export the scan uncompressed",
        ) from err
    if not decoder.is_available:
        raise ScanError(
            "unsupported",
            f"DICOM transfer syntax {syntax.name} needs a decoder package that is not installed; "
            f"install one of: {'; '.join(decoder.missing_dependencies)}",
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in _DICOM_PHOTOMETRICS:
        raise ScanError(
            "unsupported",
            f"DICOM photometric interpretation {photometric or '(missing)'!r} is not supported; "
            f"supported: {', '.join(_DICOM_PHOTOMETRICS)}",
        )
    bits = ds.get("BitsAllocated")
    allowed_bits = (8,) if int(ds.get("SamplesPerPixel") or 1) == 3 else (1, 8, 16, 32)
    if bits not in allowed_bits:
        raise ScanError(
            "unsupported",
            f"DICOM bits allocated {bits} is not supported for {photometric}; re-export as 8- or 16-bit grayscale",
        )


def _dicom_gray_to_uint8(pixels: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Modality LUT, then the VOI window or LUT (else min-max), with MONOCHROME1 made bone-bright."""
    values = apply_modality_lut(pixels, ds)
    try:
        if _has_voi(ds):
            low, high = _voi_output_range(ds)
            values = apply_voi_lut(values, ds)
        else:
            low, high = float(values.min()), float(values.max())
    except (ValueError, NotImplementedError, AttributeError) as err:
        raise ScanError("unsupported", f"the DICOM display window (VOI LUT) cannot be applied: {err}") from err
    image = _scale_to_uint8(values, low, high)
    return 255 - image if ds.PhotometricInterpretation.strip() == "MONOCHROME1" else image


def _has_voi(ds: pydicom.Dataset) -> bool:
    return bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)


def _voi_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """Black and white of the VOI transform, found by applying it to its whole input domain.

    Scaling by this range, not by the windowed image's min-max, keeps the window's meaning:
    a value at the window centre stays mid-gray even if no pixel reaches the window's ends.
    """
    if ds.get("VOILUTSequence"):
        entries, first, _ = ds.VOILUTSequence[0].LUTDescriptor
        probe = np.arange(first, first + (entries or 2**16))
    else:
        center = float(_first(ds.WindowCenter))
        width = abs(float(_first(ds.WindowWidth)))
        probe = np.array([center - 50 * width, center + 50 * width])  # far enough to saturate SIGMOID too
    out = apply_voi_lut(probe, ds)
    return float(out.min()), float(out.max())


def _first(value: object) -> object:
    """Window centre/width may list several alternative windows; the first is the default one."""
    return value[0] if isinstance(value, MultiValue) else value
