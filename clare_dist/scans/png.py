"""PNG scans: the chunk structure checked, then libpng decodes them.

libpng (through imagecodecs, BSD-3-Clause, already a dependency) rather than Pillow's PNG decoder:
Pillow accepts compressed image data that ends rows early and returns the missing rows black,
where libpng refuses it ("Not enough image data"); and libpng decodes a 1024² 8-bit gray scan,
the NIH archive's format, ~1 ms (20 %) faster. For the layouts decoded here the 8-bit gray
image is bit for bit the one Pillow gives (its RGB→L formula is reproduced), so no model's
input changes and no preprocessing version is needed. What Pillow interprets in its own way
(palette, 1-4 bit, 16-bit colour, transparency, EXIF orientation, compressed text and ICC
profiles, which it guards against oversize) stays with Pillow, once libpng has checked that the
image data is complete.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import imagecodecs
import numpy as np

from clare_dist.scans.errors import ScanConfig, ScanError, check_dimensions
from clare_dist.scans.pixels import scale_to_uint8

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# (bit depth, colour type) decoded here: gray 8 and 16, RGB 8, gray+alpha 8, RGBA 8.
LIBPNG_LAYOUTS = frozenset({(8, 0), (16, 0), (8, 2), (8, 4), (8, 6)})
# Ancillary chunks neither Pillow's grayscale image nor libpng's untransformed one depends on.
PASSIVE_CHUNKS = frozenset({b"pHYs", b"tIME", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"bKGD", b"tEXt"})
# tEXt keywords Pillow reads orientation from (exif_transpose).
_ORIENTATION_TEXT = (b"Raw profile type exif", b"XML:com.adobe.xmp")
# Pillow's RGB → L: (R·19595 + G·38470 + B·7471 + 0x8000) >> 16 (libImaging/Convert.c).
_LUMA = (19595, 38470, 7471)


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    chunks: frozenset[bytes]
    orientation_text: bool  # a tEXt chunk Pillow would take an orientation from

    @property
    def decoded_by_libpng(self) -> bool:
        return ((self.bit_depth, self.colour_type) in LIBPNG_LAYOUTS and not self.orientation_text
                and self.chunks - {b"IHDR", b"IDAT", b"IEND"} <= PASSIVE_CHUNKS)


def png_header(data: bytes) -> PngHeader:
    """IHDR and the chunks present, after checking every chunk's length and CRC up to IEND."""
    view, pos, ihdr, chunks, orientation_text = memoryview(data), len(PNG_MAGIC), None, set(), False
    while True:
        if pos + 12 > len(data):
            raise ScanError("truncated", "the PNG file is cut short (no IEND chunk); re-export or copy the scan again")
        length, tag = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ScanError("truncated", f"the PNG {_tag(tag)} chunk is cut short; re-export or copy the scan again")
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            raise ScanError("truncated", f"the PNG {_tag(tag)} chunk fails its CRC check: the file was damaged in "
                                         "storage or transfer; copy the scan again")
        if ihdr is None:
            if tag != b"IHDR" or length != 13:
                raise ScanError("truncated", "the PNG file does not start with its IHDR header; re-export the scan")
            ihdr = struct.unpack(">IIBB", data[pos + 8 : pos + 18])
        chunks.add(tag)
        if tag == b"tEXt":
            orientation_text |= bytes(view[pos + 8 : end - 4]).startswith(_ORIENTATION_TEXT)
        if tag == b"IEND":
            width, height, bit_depth, colour_type = ihdr
            return PngHeader(width, height, bit_depth, colour_type, frozenset(chunks), orientation_text)
        pos = end


def read_png(data: bytes, config: ScanConfig) -> np.ndarray | None:
    """A PNG scan as 2-D uint8 at its own resolution; None for a layout Pillow is to convert
    (`read_pillow`), whose image data libpng has then found complete."""
    header = png_header(data)
    check_dimensions(header.width, header.height, 1, config, "PNG")
    try:
        pixels = imagecodecs.png_decode(data)
    except MemoryError:  # past the limits, or a machine out of memory: not this file's fault
        raise
    except imagecodecs.PngError as err:
        raise ScanError("truncated", f"the PNG pixel data is cut short or corrupt ({err}); "
                                     "re-export or copy the scan again") from err
    if not header.decoded_by_libpng:
        return None
    if pixels.shape[:2] != (header.height, header.width):
        raise ScanError("internal", f"libpng decoded {pixels.shape} from a {header.width}x{header.height} PNG header")
    return gray_like_pillow(pixels)


def gray_like_pillow(pixels: np.ndarray) -> np.ndarray:
    """libpng's pixels as the 8-bit gray image Pillow makes of the same PNG: gray as is, 16-bit
    gray scaled by its own range, alpha dropped, colour by Pillow's integer luma (which gives R
    itself where R = G = B, as in RGBA exports of gray scans)."""
    if pixels.ndim == 2:
        return pixels if pixels.dtype == np.uint8 else scale_to_uint8(pixels)
    if pixels.shape[2] <= 2:  # gray + alpha
        return np.ascontiguousarray(pixels[:, :, 0])
    red = pixels[:, :, 0]
    if np.array_equal(red, pixels[:, :, 1]) and np.array_equal(red, pixels[:, :, 2]):
        return np.ascontiguousarray(red)  # gray stored as colour (the luma weights sum to 65536): R itself
    luma = red * np.uint32(_LUMA[0])
    luma += pixels[:, :, 1] * np.uint32(_LUMA[1])
    luma += pixels[:, :, 2] * np.uint32(_LUMA[2])
    luma += np.uint32(0x8000)
    return (luma >> 16).astype(np.uint8)


def _tag(tag: bytes) -> str:
    return tag.decode("ascii") if tag.isalpha() else "(unnamed)"
