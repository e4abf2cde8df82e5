"""DICOM scans: every transfer syntax a PACS sends, every header value checked before use.

pydicom parses almost anything with `force=True` and decodes through plugins (pylibjpeg with
openjpeg and rle, pyjpegls, python-gdcm; see pyproject.toml). What it does not do is refuse: a
header value that is not a number fails later inside `int()`, a Deflate file is inflated whole
in memory before any check, encapsulated fragments under a native syntax are drawn as pixels,
and float pixel data with NaN comes out black. Here the file meta is read first (a Deflate
dataset is inflated in a stream, capped at max_file_mb), the pixel module's values are read as
single whole numbers within the standard's ranges, the pixel data is checked against them, and
only then is the first frame decoded.
"""

from __future__ import annotations

import zlib
from io import BytesIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import generate_frames
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGTransferSyntaxes,
    UncompressedTransferSyntaxes,
)

from clare_dist.scans import jpeg12
from clare_dist.scans.errors import ScanConfig, ScanError, check_dimensions
from clare_dist.scans.pillow import check_jpeg_holds_image, jpeg_size
from clare_dist.scans.pixels import map_to_uint8

# Reading an invalid value (text in an IS) would warn and log it, and any value may be patient
# data: values are checked where they are used, and nothing is echoed.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
jpeg12.register()

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # an encapsulated fragment's item tag, little endian
_INFLATE_CHUNK = 1 << 20
# What decodes a syntax when its plugin is missing (pydicom names its own plugins' packages).
_DECODER_PACKAGES = {"1.2.840.10008.1.2.4.57": "python-gdcm", "1.2.840.10008.1.2.4.70": "python-gdcm"}


def read_dicom(data: bytes, config: ScanConfig) -> np.ndarray:
    """A DICOM scan's first frame as a 2-D uint8 image at its own resolution."""
    ds = _parse(data, config)
    if not any(tag in ds for tag in PIXEL_TAGS):
        if not len(ds):  # nothing after the file meta: cut short inside it
            raise ScanError("truncated", "the DICOM file ends inside its header; it was cut short: copy it again")
        raise ScanError("no_pixel_data", "the DICOM file has no Pixel Data: it is not an image object (e.g. a structured "
                                         "report) or it was cut short; send the image instance of the study")
    layout = _pixel_layout(ds, config)
    syntax = _transfer_syntax(ds)
    _check_decodable(syntax)
    _check_pixel_data(ds, syntax, layout)
    try:
        # a multi-frame scan is screened by its first frame
        pixels = pixel_array(ds, index=0, decoding_plugin=jpeg12.plugin_for(syntax, layout["bits_stored"]))
    except MemoryError:  # past the limits, or a machine out of memory: not this file's fault
        raise
    except Exception as err:  # each decoder plugin raises its own types on bad data
        raise ScanError("truncated", f"the DICOM pixel data ({syntax.name}) is cut short or corrupt "
                                     f"({type(err).__name__}); re-export or copy the scan again") from err
    if pixels.ndim == 3:
        return np.array(Image.fromarray(pixels, "RGB").convert("L"))
    return _gray_to_uint8(pixels, ds, layout["photometric"] == "MONOCHROME1")


def dicom_header(data: bytes, config: ScanConfig) -> Dataset:
    """The dataset without its pixel data: what a result written into the scan's study copies from it."""
    ds = _parse(data, config)
    for tag in PIXEL_TAGS:
        if tag in ds:
            del ds[tag]
    return ds


def looks_like_dicom_without_preamble(data: bytes) -> bool:
    """A DICOM dataset with no 128-byte preamble, as older systems write it.

    Its first element is from group 0x0002 (file meta) or 0x0008 (which holds SOP Class UID);
    forced parsing of anything else is skipped, and a parse only counts if it finds image or
    SOP attributes, so text that happens to parse as tags is not taken for DICOM.
    """
    if data[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x08"):  # the last: big endian (retired, still found)
        return False
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True, stop_before_pixels=True)
        return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)
    except Exception:  # pydicom can fail in many ways on arbitrary bytes; each means "not DICOM"
        return False


def _parse(data: bytes, config: ScanConfig) -> Dataset:
    try:
        stream = BytesIO(data)
        preamble = read_preamble(stream, True)
        meta = _read_file_meta_info(stream)
        if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            inflated = _inflate(data[stream.tell():], config.max_file_bytes)
            body = read_dataset(BytesIO(inflated), is_implicit_VR=False, is_little_endian=True)
            return FileDataset("", body, preamble=preamble, file_meta=meta, is_implicit_VR=False, is_little_endian=True)
        return pydicom.dcmread(BytesIO(data), force=True)
    except ScanError:
        raise
    except MemoryError:  # past the limits, or a machine out of memory: not this file's fault
        raise
    except Exception as err:  # any parse failure of a file that announced itself as DICOM
        raise ScanError("truncated", f"the DICOM file is cut short or corrupt ({type(err).__name__}); copy it again") from err


def _inflate(deflated: bytes, limit: int) -> bytearray:
    """Inflate a Deflate dataset in steps, refusing it as soon as it passes `limit` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated, pending = bytearray(), deflated
    while pending and not inflater.eof:
        inflated += inflater.decompress(pending, _INFLATE_CHUNK)
        if len(inflated) > limit:
            raise ScanError("file_too_large", f"the Deflate DICOM dataset inflates past the limit of {limit:,} bytes "
                                              "(--max-file-mb): a decompression bomb, or a scan far larger than any radiograph")
        pending = inflater.unconsumed_tail
    inflated += inflater.flush()
    return inflated


def _header_int(ds: Dataset, keyword: str, low: int, high: int, default: int | None = None) -> int:
    """A pixel-module value as one whole number in low..high, or ScanError("bad_header")."""
    try:
        value = ds.get(keyword, default) if default is not None else ds[keyword].value
    except KeyError:
        raise ScanError("bad_header", f"the DICOM image has no {keyword}; re-export the scan with a complete image module") from None
    except Exception as err:  # pydicom converts IS/DS values on access and raises on text
        raise ScanError("bad_header", f"the DICOM {keyword} is not a number; re-export the scan") from err
    if value is None or value == "":
        value = default
    if isinstance(value, (MultiValue, list, tuple, bytes)):
        raise ScanError("bad_header", f"the DICOM {keyword} holds {len(value)} values where one number belongs; re-export the scan")
    try:
        number = int(value)
        exact = number == float(value)
    except (TypeError, ValueError, OverflowError):
        raise ScanError("bad_header", f"the DICOM {keyword} is not a number; re-export the scan") from None
    if not exact or not low <= number <= high:
        raise ScanError("bad_header", f"the DICOM {keyword} is {number}, outside the {low}..{high} the standard allows; "
                                      "re-export the scan")
    return number


def _pixel_layout(ds: Dataset, config: ScanConfig) -> dict:
    rows, columns = _header_int(ds, "Rows", 0, 65535), _header_int(ds, "Columns", 0, 65535)
    frames = _header_int(ds, "NumberOfFrames", 1, 2**31 - 1, default=1)
    check_dimensions(columns, rows, frames, config, "DICOM")
    samples = _header_int(ds, "SamplesPerPixel", 1, 4, default=1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if photometric not in _PHOTOMETRICS:
        raise ScanError("unsupported", f"DICOM photometric interpretation {photometric or '(missing)'!r} is not supported; "
                                       f"supported: {', '.join(_PHOTOMETRICS)}")
    if samples != (1 if photometric.startswith("MONOCHROME") else 3):
        raise ScanError("bad_header", f"the DICOM SamplesPerPixel {samples} contradicts {photometric}; re-export the scan")
    allocated = _header_int(ds, "BitsAllocated", 1, 64)
    allowed = (8,) if samples == 3 else (1, 8, 16, 32, 64) if "PixelData" not in ds else (1, 8, 16, 32)
    if allocated not in allowed:
        raise ScanError("unsupported", f"DICOM bits allocated {allocated} is not supported for {photometric}; "
                                       "re-export as 8- or 16-bit grayscale")
    stored = allocated
    if "PixelData" in ds:
        stored = _header_int(ds, "BitsStored", 1, allocated)
        _header_int(ds, "PixelRepresentation", 0, 1, default=0)
        if samples == 3:
            _header_int(ds, "PlanarConfiguration", 0, 1, default=0)
    return {"rows": rows, "columns": columns, "frames": frames, "samples": samples, "bits": allocated,
            "bits_stored": stored, "photometric": photometric}


def _transfer_syntax(ds: Dataset) -> UID:
    if "TransferSyntaxUID" not in ds.file_meta:  # a dataset without file meta: its encoding says it
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.file_meta.TransferSyntaxUID = syntax
    return UID(str(ds.file_meta.TransferSyntaxUID))


def _check_decodable(syntax: UID) -> None:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ScanError("unsupported", f"DICOM transfer syntax {syntax} ({syntax.name}) has no decoder in clare-dist; "
                                       "ask the PACS to send Explicit VR Little Endian or JPEG 2000") from None
    if not decoder.is_available:
        packages = decoder.missing_dependencies or [_DECODER_PACKAGES.get(str(syntax), "a pydicom decoder plugin")]
        raise ScanError("unsupported", f"DICOM transfer syntax {syntax.name} needs a decoder package that is not installed; "
                                       f"install one of: {'; '.join(packages)}")


def _check_pixel_data(ds: Dataset, syntax: UID, layout: dict) -> None:
    """Refuse pixel data whose encoding or length contradicts the header, before decoding it."""
    element = ds[next(tag for tag in PIXEL_TAGS if tag in ds)]
    value = element.value or b""
    encapsulated = element.is_undefined_length or value[:4] == _ITEM_TAG
    native = syntax in UncompressedTransferSyntaxes or syntax == DeflatedExplicitVRLittleEndian
    if native and encapsulated:
        raise ScanError("bad_pixels", f"the DICOM pixel data is compressed (encapsulated) but the transfer syntax "
                                      f"{syntax.name} says uncompressed; the file was written wrongly: re-export it")
    if not native and not encapsulated:
        raise ScanError("bad_pixels", f"the DICOM transfer syntax {syntax.name} says compressed but the pixel data is not "
                                      "encapsulated; the file was written wrongly: re-export it")
    # YBR_FULL_422 stores two chroma samples per two pixels: 2 values a pixel, not 3
    samples = 2 if layout["photometric"] == "YBR_FULL_422" else layout["samples"]
    frame_pixels = layout["rows"] * layout["columns"] * samples
    if native:
        expected = -(-frame_pixels * layout["bits"] // 8)  # of the first frame, the one decoded
        if len(value) < expected:
            raise ScanError("truncated", f"the DICOM pixel data holds {len(value):,} bytes, fewer than the {expected:,} "
                                         "its first frame needs; the file was cut short: copy it again")
    elif syntax in JPEGTransferSyntaxes:
        first = next(generate_frames(value, number_of_frames=layout["frames"]), b"")
        if first[:2] != b"\xff\xd8":
            raise ScanError("bad_pixels", f"the first frame of this {syntax.name} DICOM is no JPEG stream; re-export the scan")
        width, height, coded = jpeg_size(first)
        if (width, height) != (layout["columns"], layout["rows"]):
            raise ScanError("bad_pixels", f"the JPEG frame is {width}x{height} but the DICOM header says "
                                          f"{layout['columns']}x{layout['rows']}; re-export the scan")
        check_jpeg_holds_image(width, height, coded)


def _gray_to_uint8(pixels: np.ndarray, ds: Dataset, invert: bool) -> np.ndarray:
    """Modality LUT, then the VOI window or LUT (else min-max), with MONOCHROME1 made bone-bright."""
    try:
        if _has_voi(ds):
            window = _voi_output_range(ds)
            transform = lambda v: apply_voi_lut(apply_modality_lut(v, ds), ds)  # noqa: E731
        else:
            window, transform = None, lambda v: apply_modality_lut(v, ds)  # noqa: E731
        return map_to_uint8(pixels, transform, window, invert)
    except ScanError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError, NotImplementedError) as err:
        raise ScanError("bad_header", f"the DICOM modality or display LUT cannot be applied ({type(err).__name__}); "
                                      "re-export the scan with a valid window") from err


def _has_voi(ds: Dataset) -> bool:
    return bool(ds.get("VOILUTSequence")) or ("WindowCenter" in ds and "WindowWidth" in ds)


def _voi_output_range(ds: Dataset) -> tuple[float, float]:
    """Black and white of the VOI transform, found by applying it to its whole input domain.

    Scaling by this range, not by the windowed image's min-max, keeps the window's meaning:
    a value at the window centre stays mid-gray even if no pixel reaches the window's ends.
    """
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        descriptor, data = item.get("LUTDescriptor"), item.get("LUTData")
        if not isinstance(descriptor, (MultiValue, list)) or len(descriptor) != 3 or data is None:
            raise ScanError("bad_header", "the DICOM VOI LUT has no valid descriptor or data; re-export the scan with a valid display LUT")
        entries, first, bits = (int(v) for v in descriptor)
        entries = entries or 2**16
        # LUT Data is US (a list of entries) or OW (bytes: 16-bit entries, 8-bit ones possibly packed)
        held = len(data) if not isinstance(data, bytes) else len(data) // (2 if bits > 8 else 1)
        if held < entries:
            raise ScanError("bad_header", f"the DICOM VOI LUT holds {held} entries but its descriptor declares {entries}; "
                                          "re-export the scan with a valid display LUT")
        probe = np.arange(first, first + entries)
    else:
        center = float(_first(ds.WindowCenter))
        width = abs(float(_first(ds.WindowWidth)))
        probe = np.array([center - 50 * width, center + 50 * width])  # far enough to saturate SIGMOID too
    out = apply_voi_lut(probe, ds)
    return float(out.min()), float(out.max())


def _first(value: object) -> object:
    """Window centre/width may list several alternative windows; the first is the default one."""
    return value[0] if isinstance(value, MultiValue) else value
