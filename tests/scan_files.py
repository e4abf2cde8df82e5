"""Scan files made in tests: PNGs, crafted headers and DICOMs, shared by the decoder and batch tests."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def gradient(width: int = 64, height: int = 48) -> np.ndarray:
    return (np.add.outer(np.arange(height) * 3, np.arange(width) * 2) % 256).astype(np.uint8)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose IHDR claims width x height 8-bit gray pixels."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def dicom_bytes(
    stored: np.ndarray | None,
    *,
    bits_stored: int = 16,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    preamble: bool = True,
    **attributes: object,
) -> bytes:
    """A 16-bit grayscale DICOM file of `stored` (None leaves out Pixel Data).

    With preamble: a standard Part 10 file, ExplicitVRLittleEndian. Without: a bare implicit-VR
    dataset with no file meta either, as old systems write, so its encoding has to be inferred.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.Rows, ds.Columns = (4, 4) if stored is None else stored.shape
    for name, value in attributes.items():
        setattr(ds, name, value)
    if stored is not None:
        ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    out = io.BytesIO()
    if preamble:
        ds.save_as(out, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(out, implicit_vr=True, little_endian=True)
    return out.getvalue()
