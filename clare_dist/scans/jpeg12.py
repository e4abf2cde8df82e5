"""12-bit JPEG Extended (1.2.840.10008.1.2.4.51) for pydicom, through imagecodecs.

Older CR/DX archives hold lossy 12-bit JPEG. pydicom's Pillow and GDCM plugins refuse 12-bit
precision, and its pylibjpeg-libjpeg route is GPL-3.0; imagecodecs (BSD-3-Clause) decodes it
with libjpeg-turbo 3. This module is a pydicom decoder plugin (`is_available`,
`DECODER_DEPENDENCIES`, `_decode_frame`), registered once by `register()`.
"""

from __future__ import annotations

from pydicom import uid
from pydicom.pixels.decoders import JPEGExtended12BitDecoder
from pydicom.pixels.decoders.base import DecodeRunner

LABEL = "imagecodecs"
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("imagecodecs>=2024.1.1",)}


def is_available(syntax: str) -> bool:
    try:
        import imagecodecs
    except ImportError:
        return False
    return syntax in DECODER_DEPENDENCIES and bool(imagecodecs.JPEG8.available)


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    import imagecodecs

    if runner.samples_per_pixel != 1:
        raise NotImplementedError("12-bit JPEG Extended in colour is not decoded; re-export the scan as grayscale")
    frame = imagecodecs.jpeg8_decode(src)
    if frame.shape != (runner.rows, runner.columns):
        raise ValueError(f"the JPEG frame is {frame.shape[1]}x{frame.shape[0]}, the header says {runner.columns}x{runner.rows}")
    return frame.astype(f"<u{runner.bits_allocated // 8}").tobytes()


def plugin_for(syntax: str, bits_stored: int) -> str:
    """The plugin pydicom should use: this one for 12-bit JPEG Extended (the others would each
    fail first and log an error), else pydicom's own choice ("")."""
    return LABEL if syntax == uid.JPEGExtended12Bit and bits_stored > 8 else ""


def register() -> None:
    """Add this plugin to pydicom's JPEG Extended decoder (once per process)."""
    try:
        JPEGExtended12BitDecoder.add_plugin(LABEL, (__name__, "_decode_frame"))
    except ValueError:  # registered already: pydicom keeps one plugin per label
        pass
