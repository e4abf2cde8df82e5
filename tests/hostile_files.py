"""A corpus of the odd and hostile files real archives hold, with the outcome each must have.

Every entry is decoded correctly ("ok") or refused with one ScanError kind; the tests run the
corpus through `preprocess_scan`, `clare-dist predict`, `clare-dist embed` and the HTTP API.
Entries are bytes (usable as a request body); `write_special_files` adds what only a file
system can hold (FIFOs, sockets, directories, link loops, awkward names).
"""

from __future__ import annotations

import io
import os
import socket
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    BasicTextSRStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from scan_files import dicom_bytes, gradient, png_bytes

from clare_dist.synth import TRANSFER_SYNTAXES, encode_dx


@dataclass(frozen=True)
class Hostile:
    name: str  # the file name in an archive (its suffix is what a site would have called it)
    data: bytes
    outcome: str  # "ok" or the ScanError kind


def _chunk(tag: bytes, body: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(tag + body) if crc is None else crc
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)


def _png(width: int, height: int, rows: bytes, extra: bytes = b"", idat_crc: int | None = None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", zlib.compress(rows), idat_crc)
            + _chunk(b"IEND", b""))


def _short_rows_png(colour_type: int = 0) -> bytes:
    """Image data that is one whole, valid zlib stream but holds half the rows (CRCs all correct):
    Pillow returns the missing rows black."""
    rows = b"".join(b"\0" + bytes((x * 3 + y) % 256 for x in range(64)) for y in range(24))  # 24 of 48 rows
    ihdr = struct.pack(">IIBBBBB", 64, 48, 8, colour_type, 0, 0, 0)
    palette = _chunk(b"PLTE", bytes(range(256)) * 3) if colour_type == 3 else b""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + palette + _chunk(b"IDAT", zlib.compress(rows))
            + _chunk(b"IEND", b""))


def scan_png() -> bytes:
    return png_bytes(Image.fromarray(gradient(64, 48)))


def _bad_crc_png() -> bytes:
    data = bytearray(scan_png())
    at = data.index(b"IDAT") + 8  # a bit flipped in the image data: the chunk's CRC no longer fits
    data[at] ^= 0x01
    return bytes(data)


def _text_bomb() -> bytes:
    # zTXt that inflates to 64 MiB, past Pillow's limit on text chunks
    body = b"Comment\x00\x00" + zlib.compress(b"\0" * (64 << 20), 9)
    rows = b"".join(b"\0" + bytes(range(i, i + 16)) for i in range(16))
    return _png(16, 16, rows, extra=_chunk(b"zTXt", body))


def _icc_bomb() -> bytes:
    body = b"icc\x00\x00" + zlib.compress(b"\0" * (64 << 20), 9)
    rows = b"".join(b"\0" + bytes(range(i, i + 16)) for i in range(16))
    return _png(16, 16, rows, extra=_chunk(b"iCCP", body))


def _sliver_png() -> bytes:
    # 1 x 49,000,000: a valid stream of one row (1 filter byte + 49 M pixels) in ~48 KB
    return _png(49_000_000, 1, b"\0" + bytes(49_000_000))


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality)
    return out.getvalue()


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of valid JPEG markers around a tiny scan, with a SOF claiming width x height."""
    data = bytearray(_jpeg(gradient(8, 8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _dataset(stored: np.ndarray, **attributes: object) -> Dataset:
    return pydicom.dcmread(io.BytesIO(dicom_bytes(stored, **attributes)))


def _saved(ds: Dataset, **options: object) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, **options)
    return out.getvalue()


def _raw(data: bytes, tag: tuple[int, int], vr: bytes, old: bytes, new: bytes) -> bytes:
    """`data` with one explicit-VR element's value bytes replaced (short form: 2-byte length)."""
    head = struct.pack("<HH", *tag) + vr
    before = head + struct.pack("<H", len(old)) + old
    assert data.count(before) == 1, "the element to replace must occur once"
    return data.replace(before, head + struct.pack("<H", len(new)) + new)


def stored_scan(width: int = 64, height: int = 48) -> np.ndarray:
    """A 12-bit stored image with structure (a gradient)."""
    return (gradient(width, height).astype(np.uint16) * 16).astype(np.uint16)


def compressed(stored: np.ndarray, syntax: str, **options: object) -> bytes:
    ds = _dataset(stored, bits_stored=12)
    ds.compress(syntax, **options)
    return _saved(ds)


def _deflate_bomb() -> bytes:
    """A Deflate DICOM whose dataset inflates to 200 MiB (past the default 128 MiB limit)."""
    ds = _dataset(np.zeros((2, 2)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = _saved(ds, enforce_file_format=True)
    meta_end = head.index(b"DICM") + 4
    meta_end += 12 + struct.unpack("<I", head[meta_end + 8 : meta_end + 12])[0]  # (0002,0000) group length
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    body = [deflater.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 200 << 20))]
    body += [deflater.compress(zeros) for _ in range(200)]
    return head[:meta_end] + b"".join(body) + deflater.flush()


def _float_dicom(values: np.ndarray) -> bytes:
    ds = _dataset(np.zeros((2, 2)))
    del ds.PixelData
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    del ds.PixelRepresentation
    ds.FloatPixelData = values.astype("<f4").tobytes()
    return _saved(ds)


def _u32_dicom() -> bytes:
    ds = _dataset(np.zeros((2, 2)))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.Rows, ds.Columns = 48, 64
    ds.PixelData = (gradient(64, 48).astype("<u4") * 1_000_000).tobytes()
    return _saved(ds)


def _palette_dicom() -> bytes:
    ds = _dataset(stored_scan(), bits_stored=8, photometric="PALETTE COLOR")
    return _saved(ds)


def _rgb_dicom() -> bytes:
    ds = _dataset(np.zeros((2, 2)))
    rgb = np.stack([gradient(64, 48)] * 3, axis=-1)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.Rows, ds.Columns = 48, 64
    ds.PixelData = rgb.tobytes()
    return _saved(ds)


def _structured_report() -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, generate_uid()
    ds.Modality, ds.ValueType = "SR", "CONTAINER"
    return _saved(ds, enforce_file_format=True)


def _encapsulated_under_native() -> bytes:
    ds = _dataset(stored_scan())
    ds.PixelData = encapsulate([_jpeg(gradient(64, 48))])  # fragments, but the syntax says native
    ds["PixelData"].is_undefined_length = True
    return _saved(ds)


def _jpeg_baseline_dicom(pixels: np.ndarray) -> bytes:
    ds = _dataset(np.zeros((2, 2)), bits_stored=8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.Rows, ds.Columns = pixels.shape
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([_jpeg(pixels, 95)])
    ds["PixelData"].is_undefined_length = True
    return _saved(ds)


def _short_voi_lut() -> bytes:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = np.arange(16, dtype="<u2").tobytes()  # 16 entries where 4096 are declared
    return dicom_bytes(stored_scan(), bits_stored=12, VOILUTSequence=[item])


def _unknown_syntax() -> bytes:
    ds = _dataset(stored_scan())
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    ds.PixelData = encapsulate([bytes(64)])
    ds["PixelData"].is_undefined_length = True
    return _saved(ds)


def corpus() -> list[Hostile]:
    """Every kind of content the decoder must decode or refuse, with its outcome."""
    good = scan_png()
    dicom = dicom_bytes(stored_scan(), bits_stored=12)
    frames_value = dicom_bytes(stored_scan(), bits_stored=12, NumberOfFrames="7")
    rng = np.random.default_rng(14)
    nan = gradient(64, 48).astype(np.float32)
    nan[3, 3] = np.nan
    entries = [
        Hostile("good.png", good, "ok"),
        Hostile("good.jpg", _jpeg(gradient(64, 48)), "ok"),
        Hostile("good.dcm", dicom, "ok"),
        Hostile("zero-bytes.png", b"", "empty"),
        Hostile("one-byte.png", b"\x89", "not_an_image"),
        Hostile("random.dcm", rng.bytes(4096), "not_an_image"),
        Hostile("gif-renamed.png", b"GIF89a" + bytes(64), "not_an_image"),
        Hostile("bmp-renamed.png", b"BM" + bytes(64), "not_an_image"),
        Hostile("tiff-renamed.dcm", b"II*\x00" + bytes(64), "not_an_image"),
        Hostile("webp-renamed.jpg", b"RIFF\x20\x00\x00\x00WEBPVP8 " + bytes(32), "not_an_image"),
        Hostile("page.png", b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "not_an_image"),
        Hostile("drawing.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not_an_image"),
        Hostile("report.dcm", b"%PDF-1.7\n" + bytes(64), "not_an_image"),
        Hostile("archive.png", b"PK\x03\x04" + bytes(64), "not_an_image"),
        Hostile("truncated.png", good[: len(good) // 2], "truncated"),
        Hostile("magic-only.png", good[:8], "truncated"),
        Hostile("bad-crc.png", _bad_crc_png(), "truncated"),
        Hostile("short-rows.png", _short_rows_png(), "truncated"),
        Hostile("short-rows-palette.png", _short_rows_png(colour_type=3), "truncated"),
        Hostile("chunk-past-end.png", good[:33] + struct.pack(">I", 1 << 30) + b"IDAT" + bytes(16), "truncated"),
        Hostile("text-bomb.png", _text_bomb(), "bad_header"),
        Hostile("icc-bomb.png", _icc_bomb(), "bad_header"),
        Hostile("huge-header.png", _png(60_000, 60_000, b"\0" * 61), "too_many_pixels"),
        Hostile("sliver.png", _sliver_png(), "bad_dimensions"),
        Hostile("zero-width.png", _png(0, 10, b""), "bad_dimensions"),
        Hostile("truncated.jpg", _jpeg(gradient(256, 256))[:600], "truncated"),
        Hostile("tiny-declares-7000.jpg", _jpeg_declaring(7000, 7000), "bad_pixels"),
        Hostile("huge-header.jpg", _jpeg_declaring(65000, 65000), "too_many_pixels"),
        Hostile("truncated.dcm", dicom[:200], "truncated"),
        Hostile("short-pixels.dcm", dicom[:-100], "truncated"),
        Hostile("no-preamble.dcm", dicom_bytes(stored_scan(), bits_stored=12, preamble=False), "ok"),
        Hostile("no-meta-group.dcm", dicom[:128] + b"DICM" + dicom[dicom.index(b"\x08\x00", 132):], "ok"),
        Hostile("frames-not-a-number.dcm", _raw(frames_value, (0x0028, 0x0008), b"IS", b"7 ", b"abc "), "bad_header"),
        Hostile("frames-multivalued.dcm", _raw(frames_value, (0x0028, 0x0008), b"IS", b"7 ", b"2\\3 "), "bad_header"),
        Hostile("rows-multivalued.dcm", _raw(dicom, (0x0028, 0x0010), b"US", struct.pack("<H", 48), struct.pack("<HH", 48, 48)), "bad_header"),
        Hostile("bits-stored-over-allocated.dcm", _raw(dicom, (0x0028, 0x0101), b"US", struct.pack("<H", 12), struct.pack("<H", 40)), "bad_header"),
        Hostile("no-rows.dcm", dicom_bytes(stored_scan(), bits_stored=12).replace(b"\x28\x00\x10\x00US", b"\x28\x00\x11\x01US"), "bad_header"),
        Hostile("huge-header.dcm", dicom_bytes(np.zeros((2, 2)), Rows=8000, Columns=8000), "too_many_pixels"),
        Hostile("sliver.dcm", dicom_bytes(np.zeros((2, 2)), Rows=1, Columns=60000), "bad_dimensions"),
        Hostile("too-many-frames.dcm", dicom_bytes(stored_scan(), NumberOfFrames=100_000), "too_many_pixels"),
        Hostile("signed.dcm", dicom_bytes(stored_scan().astype(np.int16) - 2048, bits_stored=12, signed=True), "ok"),
        Hostile("float.dcm", _float_dicom(gradient(64, 48).astype(np.float32) / 7), "ok"),
        Hostile("float-nan.dcm", _float_dicom(nan), "bad_pixels"),
        Hostile("unsigned-32-bit.dcm", _u32_dicom(), "ok"),
        Hostile("palette.dcm", _palette_dicom(), "unsupported"),
        Hostile("rgb.dcm", _rgb_dicom(), "ok"),
        Hostile("structured-report.dcm", _structured_report(), "no_pixel_data"),
        Hostile("encapsulated-under-native.dcm", _encapsulated_under_native(), "bad_pixels"),
        Hostile("short-voi-lut.dcm", _short_voi_lut(), "bad_header"),
        Hostile("mpeg2.dcm", _unknown_syntax(), "unsupported"),
        Hostile("deflate-bomb.dcm", _deflate_bomb(), "file_too_large"),
        Hostile("jpeg-baseline.dcm", _jpeg_baseline_dicom(gradient(64, 48)), "ok"),
        Hostile("jpeg-baseline-declares-7000.dcm", _raw(_raw(_jpeg_baseline_dicom(gradient(64, 48)), (0x0028, 0x0010), b"US",
                struct.pack("<H", 48), struct.pack("<H", 7000)), (0x0028, 0x0011), b"US", struct.pack("<H", 64),
                struct.pack("<H", 7000)), "bad_pixels"),
        Hostile("jpeg-ls.dcm", compressed(stored_scan(), JPEGLSLossless), "ok"),
        Hostile("jpeg2000.dcm", compressed(stored_scan(), JPEG2000Lossless), "ok"),
        Hostile("rle.dcm", compressed(stored_scan(), RLELossless), "ok"),
    ]
    entries += [Hostile(f"dx-{syntax}.dcm", encode_dx(stored_scan(), 12, "MONOCHROME1", syntax), "ok")
                for syntax in TRANSFER_SYNTAXES]
    deflated = _dataset(stored_scan(), bits_stored=12)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    entries.append(Hostile("deflate.dcm", _saved(deflated, enforce_file_format=True), "ok"))
    return entries


def write_special_files(folder: Path, good: bytes) -> dict[str, str]:
    """What only a file system holds, as {name relative to folder: outcome}: FIFOs, a socket, a
    directory named like a scan (listed by manifest), link loops, links, awkward names."""
    folder.mkdir(parents=True, exist_ok=True)
    outcomes = {}
    os.mkfifo(folder / "pipe.png")
    outcomes["pipe.png"] = "not_a_file"
    os.symlink("pipe.png", folder / "link-to-pipe.dcm")
    outcomes["link-to-pipe.dcm"] = "not_a_file"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "socket.png"))
    sock.close()
    outcomes["socket.png"] = "not_a_file"
    os.symlink("loop-b.png", folder / "loop-a.png")
    os.symlink("loop-a.png", folder / "loop-b.png")
    outcomes |= {"loop-a.png": "unreadable", "loop-b.png": "unreadable"}
    os.symlink("nowhere.png", folder / "dangling.png")
    outcomes["dangling.png"] = "unreadable"
    (folder / "good-target.png").write_bytes(good)
    os.symlink("good-target.png", folder / "link-to-good.png")
    outcomes |= {"good-target.png": "ok", "link-to-good.png": "ok"}
    for name in ("scan with spaces.png", "scän-ünïcode-肺.png", "new\nline.png"):
        (folder / name).write_bytes(good)
        outcomes[name] = "ok"
    return outcomes
