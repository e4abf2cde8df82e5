"""JPEG scans, and the PNG layouts `png.read_png` leaves to Pillow, with the container checked first.

Pillow decodes what it is given as far as it can: it does not check the CRC of image data, a
JPEG whose entropy-coded data ends early comes out gray where the data is missing, and an
oversized text or colour-profile chunk raises a bare `ValueError`. So the PNG chunk structure
(lengths, CRCs, IHDR first, IEND present) and the JPEG markers (a frame header, a scan, its end)
are walked first — a few ms for a large file — and dimensions are checked from those headers
before anything is decoded.
"""

from __future__ import annotations

import struct
from io import BytesIO

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from clare_dist.scans.errors import ScanConfig, ScanError, check_dimensions
from clare_dist.scans.pixels import scale_to_uint8

JPEG_MAGIC = b"\xff\xd8\xff"
# A baseline JPEG codes each 8×8 block in at least 2 bits, 1 byte per 256 pixels; a stream under a
# 64th of that holds no image (e.g. 361 bytes declaring 7000²), and Pillow would draw it flat gray.
MIN_JPEG_BYTES_PER_PIXEL = 1 / (256 * 64)
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4 DHT, C8 JPG, CC DAC
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}


def jpeg_size(data: bytes) -> tuple[int, int, int]:
    """(width, height, bytes of image data) from the frame header, after checking that a scan
    follows and ends (EOI)."""
    pos, size = 2, None
    while True:
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise ScanError("truncated", "the JPEG file is cut short or corrupt before its image data; re-export the scan")
        marker = data[pos + 1]
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        if marker == 0xD9 or length < 2:
            raise ScanError("truncated", "the JPEG file ends before its image data; re-export the scan")
        pos += 2 + length
    if size is None:
        raise ScanError("truncated", "the JPEG file has no frame header before its image data; re-export the scan")
    if data.rfind(b"\xff\xd9") < pos:
        raise ScanError("truncated", "the JPEG image data is cut short (no end-of-image marker); copy the scan again")
    return size[0], size[1], len(data) - pos


def check_jpeg_holds_image(width: int, height: int, coded: int) -> None:
    """Refuse a JPEG with far too few bytes of image data for its declared size (see the floor)."""
    if coded < width * height * MIN_JPEG_BYTES_PER_PIXEL:
        raise ScanError("bad_pixels", f"the JPEG declares {width}x{height} pixels but holds {coded:,} bytes of image "
                                      "data, far too few for any image; it would decode flat gray. Re-export the scan")


def read_pillow(data: bytes, fmt: str, config: ScanConfig, jpeg_draft: int | None = None) -> np.ndarray:
    """A PNG or JPEG scan as a 2-D uint8 image at its own resolution; with `jpeg_draft`, a JPEG at the
    smallest 1/2ᵏ DCT scale whose sides are both still at least that (libjpeg skips the rest)."""
    name = fmt.upper()
    if fmt == "jpeg":  # a PNG comes here only from `png.read_png`, its chunks and size checked there
        width, height, coded = jpeg_size(data)
        check_dimensions(width, height, 1, config, name)
        check_jpeg_holds_image(width, height, coded)
    try:
        image = Image.open(BytesIO(data), formats=[name])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ScanError("too_many_pixels", f"the {name} header declares more pixels than Pillow's decompression-bomb guard "
                                           f"allows ({err}); downscale a genuine scan this large before screening") from err
    except ValueError as err:  # Pillow's guard on oversized text/ICC chunks: "Decompressed Data Too Large"
        raise ScanError("bad_header", f"the {name} file holds an oversized metadata chunk ({err}); re-export the scan "
                                      "without embedded text or colour profiles") from err
    except MemoryError:  # past the limits, or a machine out of memory: not this file's fault
        raise
    except Exception as err:  # the container walk passed, so a header Pillow cannot parse is corrupt
        raise ScanError("truncated", f"the {name} header is corrupt ({type(err).__name__}); re-export the scan") from err
    with image:
        if jpeg_draft is not None and fmt == "jpeg":
            image.draft(image.mode, (jpeg_draft, jpeg_draft))
        try:
            image.load()
        except MemoryError:  # past the limits, or a machine out of memory: not this file's fault
            raise
        except Exception as err:  # OSError, SyntaxError, zlib.error, ValueError, struct.error, ...
            raise ScanError("truncated", f"the {name} pixel data is cut short or corrupt ({err}); "
                                         "re-export or copy the scan again") from err
        ImageOps.exif_transpose(image, in_place=True)
        if image.mode.startswith("I") or image.mode == "F":
            # 16-bit files carry no display window, so the image's own range is the only one known;
            # a fixed /257 would leave 10-12-bit data (the usual X-ray depth) nearly black.
            return scale_to_uint8(np.asarray(image))
        try:
            gray = image if image.mode == "L" else image.convert("L")
        except ValueError as err:
            raise ScanError("unsupported", f"{name} pixel mode {image.mode!r} cannot be made grayscale; "
                                           "save the scan as 8-bit grayscale") from err
        return _pixels(gray)


def _pixels(image: Image.Image) -> np.ndarray:
    """An 8-bit image's pixels as a read-only array, lent by Pillow through Arrow's C data interface
    where its rows are one block of memory (up to 16 MB): np.array copies row by row, ~1 ms a 1024²
    scan, a sixth of its whole preprocessing. Larger images are copied."""
    try:
        return np.asarray(pa.array(image)).reshape(image.height, image.width)
    except ValueError:  # "Image rows are not contiguous in memory"
        return np.array(image)

