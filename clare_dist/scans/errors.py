"""The one failure of scan decoding, and the limits that bound what one scan may cost.

Whatever a file holds, decoding it ends in an image or in a `ScanError` for that file alone: the
batch job records the kind and the reason in the scan's row and goes on, the API answers 4xx, and
`clare-dist predict` reports the file. The limits are decided from headers before anything is
allocated, so one file never costs more memory or time than an accepted scan does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from clare_dist.errors import ClareError
from clare_dist.scans.preprocessing import preprocessing

SCAN_ERROR_KINDS: tuple[str, ...] = (
    "empty",  # 0 bytes
    "truncated",  # the format was recognised, but its data is cut short or corrupt (bad CRC, short stream)
    "not_an_image",  # the content is no PNG, JPEG or DICOM
    "not_a_file",  # a FIFO, socket, device or directory: never opened for reading
    "file_too_large",  # more bytes than max_file_mb, read or after inflating a Deflate DICOM
    "no_pixel_data",  # a DICOM object without an image (SR, presentation state, ...)
    "too_many_pixels",  # declared dimensions or frames over the limits
    "bad_dimensions",  # declared dimensions no radiograph has (zero, a sliver)
    "bad_header",  # header values that are not what the standard allows (non-numeric, multi-valued, ...)
    "bad_pixels",  # pixel data that contradicts its header (NaN/Inf, encapsulated under a native syntax, ...)
    "unsupported",  # a valid file of a kind that is not screened (palette colour, an unknown transfer syntax)
    "unreadable",  # the file exists but cannot be read (permissions, I/O error, a symlink loop)
    "internal",  # an unexpected failure: logged with its traceback; still this scan's row only
)


class ScanError(ClareError, ValueError):
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
    """The model's input side (`size`, from the bundle) and the site's limits on one scan.

    - `max_pixels`: columns × rows of the one frame decoded (50 M: a 7000² scan; the largest
      detectors are ~4300²).
    - `max_file_mb`: bytes read from a file or body, and bytes a Deflate DICOM may inflate to.
    - `max_frames`: frames a multi-frame DICOM may declare (its first frame is screened).
    - `max_aspect`: longer side ÷ shorter side (radiographs are 1–1.3; a 1 × 49 M sliver is
      refused before its resize would need gigabytes).
    - `preprocessing`: how a decoded scan becomes the model's input (`scans.preprocessing`); None
      is the bundle's where there is one (`Bundle.scan_config`), else the default.
    """

    size: int = 256
    max_pixels: int = 50_000_000
    max_file_mb: float = 128.0
    max_frames: int = 1024
    max_aspect: float = 8.0
    preprocessing: str | None = None

    def __post_init__(self) -> None:
        if self.preprocessing is not None:
            preprocessing(self.preprocessing)  # UnknownPreprocessingError for an id this clare-dist lacks
        for name in ("size", "max_pixels", "max_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ScanConfig.{name} must be a positive integer; got {value!r}")
        for name in ("max_file_mb", "max_aspect"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"ScanConfig.{name} must be a positive number; got {value!r}")
        if self.max_aspect < 1:
            raise ValueError(f"ScanConfig.max_aspect is a ratio of the longer side to the shorter, at least 1; got {self.max_aspect}")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    def sized(self, size: int) -> ScanConfig:
        """The same limits for another input size (a thumbnail, or the bundle's model input)."""
        return replace(self, size=size)


def check_dimensions(width: int, height: int, frames: int, config: ScanConfig, what: str) -> None:
    """Refuse declared dimensions before any pixel is allocated: zero, a sliver, or too many."""
    shape = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
    if width <= 0 or height <= 0:
        raise ScanError("bad_dimensions", f"the {what} header declares {shape} pixels: an image needs both sides; re-export the scan")
    if frames > config.max_frames:
        raise ScanError("too_many_pixels", f"the {what} header declares {frames:,} frames, over the limit of {config.max_frames:,}; "
                                           "a radiograph has one frame (raise --max-frames for a genuine multi-frame scan)")
    pixels = width * height
    if pixels > config.max_pixels:
        raise ScanError(
            "too_many_pixels",
            f"the {what} header declares {shape} = {pixels:,} pixels a frame, over the limit of {config.max_pixels:,} "
            "that guards against decompression bombs; if the scan is genuine, raise --max-pixels",
        )
    aspect = max(width, height) / min(width, height)
    if aspect > config.max_aspect:
        raise ScanError("bad_dimensions", f"the {what} header declares {shape} pixels, an aspect ratio of {aspect:,.0f}:1; "
                                          f"a radiograph is near square (limit {config.max_aspect:g}:1, --max-aspect)")
