"""Digital X-Ray DICOM files of the synthetic archive, complete enough for DICOM tools to accept.

A screening system meets DX files from many modalities in many encodings. The synthetic archive
writes that variety (MONOCHROME1 and 2, 12 and 16 bits stored, every common transfer syntax) so
that the decoding path is tested on what a real PACS sends, and every file carries all the modules
the Digital X-Ray Image For Presentation IOD requires (PS3.3 A.26), so that a validator
(`dciodvfy`), highdicom or a PACS takes it as it is instead of each consumer working around gaps.

UIDs and dates derive from the seed and the patient, so the same config writes the same bytes.
`encode_dx` writes one such file from any stored-value array (test files, benchmarks).
"""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from .. import __version__

# `--transfer-syntax` names -> the transfer syntax a file is written in.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "jpeg-lossless": JPEGLosslessSV1,
    "jpeg-ls": JPEGLSLossless,
    "jpeg-ls-near": JPEGLSNearLossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg2000-lossy": JPEG2000,
    "rle": RLELossless,
    "deflate": DeflatedExplicitVRLittleEndian,
}
JPEG_LS_NEAR = 2  # jpeg-ls-near: no stored value differs from the original by more than this
J2K_LOSSY_PSNR = 50.0  # jpeg2000-lossy: target PSNR in dB, peak 2**BitsStored - 1
_ENCODER_OPTIONS: dict[str, dict[str, object]] = {
    "jpeg-ls-near": {"jls_error": JPEG_LS_NEAR},
    "jpeg2000-lossy": {"j2k_psnr": [J2K_LOSSY_PSNR]},
}
# Lossy syntaxes -> Lossy Image Compression Method (0028,2114), the standard each follows.
_LOSSY_METHODS: dict[str, str] = {"jpeg-ls-near": "ISO_14495_1", "jpeg2000-lossy": "ISO_15444_1"}
LOSSY_SYNTAXES = frozenset(_LOSSY_METHODS)
# Photometric interpretation -> (Presentation LUT Shape, Pixel Intensity Relationship Sign): stored
# MONOCHROME1 values rise with the beam intensity reaching the detector, MONOCHROME2 ones fall.
_GRAYSCALE: dict[str, tuple[str, int]] = {"MONOCHROME1": ("INVERSE", 1), "MONOCHROME2": ("IDENTITY", -1)}
_DISPLAY_RANGE = (0.08, 0.92)  # a display value of 0..1 is stored at 8%..92% of the range (detector headroom)
_UID_NAMESPACE = uuid.UUID("4fced718-79ac-4b8b-9eb1-6325dbbad438")  # clare-dist's own, for name-based UIDs
_VIEW_CODES = {"PA": codes.cid4010.PosteroAnterior, "AP": codes.cid4010.AnteroPosterior}


@dataclass(frozen=True)
class DXSubject:
    """Whose image it is and where it belongs: the patient, the study, its series and the instance."""

    patient_id: str
    sex: str  # M, F or O
    birth_date: date
    study_time: datetime  # the study's date and time; the image's content date and time too
    study_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    view: str = "PA"  # PA or AP
    imager_pixel_spacing: float = 0.143  # mm, at the detector

    @classmethod
    def synthetic(
        cls, entropy: Sequence[str], patient: int, follow_up: int, sex: str, birth_date: date, study_time: datetime,
        view: str, imager_pixel_spacing: float, *, variant: str = "",
    ) -> DXSubject:
        """Follow-up `follow_up` of synthetic patient `patient`: one study of one series of one image.

        The UIDs are 2.25 UIDs of name-based (SHA-1, version 5) UUIDs of `entropy` (e.g. the
        archive's seed), the patient and the follow-up, so they repeat for the same archive and
        differ between studies and archives (pydicom's generate_uid ignores its entropy under 2.25).
        A `variant` (e.g. a lossy encoding's name) gets its own series and instance in the same
        study: a lossy-compressed image is a new image, whereas a lossless one may keep its UID.
        """
        def uid(*parts: object) -> str:
            name = "/".join(map(str, [*entropy, patient, follow_up, *parts]))
            return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"

        return cls(
            patient_id=f"{patient:08d}", sex=sex, birth_date=birth_date, study_time=study_time,
            study_id=f"{patient:08d}{follow_up:03d}", study_uid=uid("study"), series_uid=uid("series", 1, variant),
            sop_uid=uid("series", 1, variant, "instance", 1), view=view, imager_pixel_spacing=imager_pixel_spacing,
        )


def dx_formats(n: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """(photometric interpretation, bits stored) per file; every combination occurs from n = 4."""
    kinds = [(m, b) for m in ("MONOCHROME1", "MONOCHROME2") for b in (12, 16)]
    return [kinds[k] for k in rng.permutation(np.arange(n) % len(kinds))]


def display_to_stored(img: np.ndarray, bits_stored: int, photometric: str) -> tuple[np.ndarray, tuple[float, float]]:
    """Stored values of a [0, 1] display image and the window (center, width) that shows it again.

    MONOCHROME1 is stored inverted, so that it displays the same as MONOCHROME2.
    """
    top = 2**bits_stored - 1
    lo, hi = (round(f * top) for f in _DISPLAY_RANGE)
    stored = np.round(lo + img * (hi - lo)).astype(np.uint16)
    center = (lo + hi) / 2
    if photometric == "MONOCHROME1":
        stored, center = top - stored, top - center
    return stored, (center, hi - lo)


def age_on(birth: date, day: date) -> int:
    """Completed years of life on `day` (a 29 February birthday counts on 1 March in other years)."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def study_times(ages: Sequence[int], rng: np.random.Generator) -> tuple[date, list[datetime]]:
    """A birth date and one study date and time per follow-up, chronological and matching `ages`.

    `ages` (the archive's Patient Age per follow-up) may only stay or rise; the follow-ups at one
    age fall at distinct random minutes of 08:00-17:59 within that year of life.
    """
    if any(b < a for a, b in zip(ages, ages[1:])):
        raise ValueError(f"ages must not decrease between follow-ups, got {list(ages)}")
    birth = date(2010 - ages[0], 1, 1) + timedelta(days=int(rng.integers(365)))
    times: list[datetime] = []
    for age in sorted(set(ages)):
        start, end = _birthday(birth, age), _birthday(birth, age + 1)
        minutes = np.sort(rng.choice((end - start).days * 600, size=ages.count(age), replace=False))
        for m in minutes.tolist():
            times.append(datetime.combine(start, datetime.min.time()) + timedelta(days=m // 600, hours=8, minutes=m % 600))
    return birth, times


def _birthday(birth: date, age: int) -> date:
    """The first day on which someone born on `birth` is `age` years old."""
    try:
        return birth.replace(year=birth.year + age)
    except ValueError:  # born on 29 February, a common year
        return date(birth.year + age, 3, 1)


def encode_dx(
    stored: np.ndarray,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = "explicit",
    *,
    window: tuple[float, float] | None = None,
    subject: DXSubject | None = None,
) -> bytes:
    """One DX For Presentation Part 10 file of `stored` (2-D, values < 2**bits_stored, 16 bits allocated).

    `transfer_syntax` is a key of TRANSFER_SYNTAXES; the lossy ones (jpeg-ls-near: no value off by
    more than JPEG_LS_NEAR; jpeg2000-lossy: PSNR about J2K_LOSSY_PSNR) mark the file lossy, with
    ratio and method. `window` (center, width) defaults to the whole stored range. Without
    `subject` the patient, study and UIDs are derived from the pixels and the syntax: the same
    call gives the same bytes, and files of other pixels or syntaxes get other UIDs.
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}; choose one of {', '.join(TRANSFER_SYNTAXES)}")
    if photometric not in _GRAYSCALE:
        raise ValueError(f"photometric must be one of {', '.join(_GRAYSCALE)}, got {photometric!r}")
    if not 9 <= bits_stored <= 16:  # fewer fit 8 bits allocated (and pydicom's RLE of them would not decode)
        raise ValueError(f"bits_stored must be 9..16 (the pixels are 16 bits allocated), got {bits_stored}")
    if not np.issubdtype(stored.dtype, np.integer) or stored.ndim != 2 or stored.size == 0:
        raise ValueError(f"stored must be a non-empty 2-D integer array, got {stored.dtype} of shape {stored.shape}")
    if stored.min() < 0 or stored.max() >= 2**bits_stored:
        raise ValueError(f"stored values must lie in 0..{2**bits_stored - 1} for bits_stored={bits_stored}")
    stored = np.ascontiguousarray(stored, dtype=np.uint16)
    if subject is None:
        digest = hashlib.sha256(stored.tobytes() + f"{bits_stored} {photometric} {transfer_syntax}".encode()).hexdigest()
        subject = DXSubject.synthetic(
            ["clare-dist encode_dx", digest], 1, 0, "O", date(1970, 1, 1), datetime(2020, 1, 1, 12), "PA", 0.143
        )
    if window is None:
        window = (2 ** (bits_stored - 1), 2**bits_stored)
    ds = _dx_dataset(stored, bits_stored, photometric, window, subject)
    _compress(ds, stored, transfer_syntax)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _dx_dataset(
    stored: np.ndarray, bits_stored: int, photometric: str, window: tuple[float, float], subject: DXSubject
) -> Dataset:
    """The uncompressed dataset: every module of the DX For Presentation IOD, in IOD order."""
    s = subject
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = s.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    # Patient (no real person: de-identified by construction)
    ds.PatientName = f"SYNTHETIC^P{s.patient_id}"
    ds.PatientID = s.patient_id
    ds.PatientBirthDate = s.birth_date.strftime("%Y%m%d")
    ds.PatientSex = s.sex
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic image drawn by clare-dist; no real patient"
    # General Study, Patient Study
    ds.StudyInstanceUID = s.study_uid
    ds.StudyDate = ds.ContentDate = s.study_time.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = s.study_time.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = s.study_id
    ds.AccessionNumber = ""
    ds.StudyDescription = "XR CHEST " + s.view
    ds.PatientAge = f"{age_on(s.birth_date, s.study_time.date()):03d}Y"
    # General Series, DX Series
    ds.Modality = "DX"
    ds.SeriesInstanceUID = s.series_uid
    ds.SeriesNumber = 1
    ds.PresentationIntentType = "FOR PRESENTATION"
    # General Equipment
    ds.Manufacturer = "clare-dist synthetic"
    ds.ManufacturerModelName = "clare-dist synth"
    ds.SoftwareVersions = __version__
    # General Image, DX Anatomy Imaged, DX Image, DX Detector, DX Positioning
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]  # drawn as a viewer shows a chest film: the patient's left on the right
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.DerivationDescription = "rendered from a synthetic anatomy model"
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.ImageLaterality = "U"  # the chest is an unpaired body part
    ds.BodyPartExamined = "CHEST"
    ds.AnatomicRegionSequence = [_code_item(codes.cid4009.Chest)]
    ds.PixelIntensityRelationship = "LOG"
    ds.PresentationLUTShape, ds.PixelIntensityRelationshipSign = _GRAYSCALE[photometric]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"  # DX: stored values are the output
    ds.WindowCenter, ds.WindowWidth = window
    ds.LossyImageCompression = "00"
    ds.DetectorType = ""
    ds.ImagerPixelSpacing = [s.imager_pixel_spacing] * 2
    ds.PositionerType = ""
    ds.ViewPosition = s.view
    ds.ViewCodeSequence = [_code_item(_VIEW_CODES[s.view])]
    # Acquisition Context: nothing recorded
    ds.AcquisitionContextSequence = []
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.PixelData = stored.astype("<u2").tobytes()
    # SOP Common
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = s.sop_uid
    return ds


def _code_item(code: Code) -> Dataset:
    """A code sequence item (Code Value, Coding Scheme Designator, Code Meaning) of a pydicom Code."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _compress(ds: Dataset, stored: np.ndarray, transfer_syntax: str) -> None:
    """Re-encode the dataset's pixels in `transfer_syntax`; a lossy one records its ratio and method."""
    uid = TRANSFER_SYNTAXES[transfer_syntax]
    native = len(ds.PixelData)
    if uid == JPEGLosslessSV1:  # pydicom has no encoder for it
        ds.PixelData = encapsulate([_jpeg_lossless_sv1(stored, int(ds.BitsStored))])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
    elif uid.is_compressed:
        ds.compress(uid, stored, generate_instance_uid=False, **_ENCODER_OPTIONS.get(transfer_syntax, {}))
    else:  # explicit VR little endian, or the same deflated as the file is written
        ds.file_meta.TransferSyntaxUID = uid
    if transfer_syntax in _LOSSY_METHODS:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{native / len(ds.PixelData):.2f}"
        ds.LossyImageCompressionMethod = _LOSSY_METHODS[transfer_syntax]


def _jpeg_lossless_sv1(stored: np.ndarray, bits_stored: int) -> bytes:
    """One JPEG Lossless (process 14, selection value 1) codestream of a 16-bit frame, by GDCM.

    GDCM objects are reference counted in C++: once the filter's smart pointer holds the input
    image, Python must not free it too (`thisown = False`), or the interpreter crashes.
    """
    import gdcm  # python-gdcm, imported here: only this syntax needs it

    rows, columns = stored.shape
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimension(0, columns)
    image.SetDimension(1, rows)
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, bits_stored, bits_stored - 1, 0))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ExplicitVRLittleEndian))
    pixels = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    pixels.SetByteStringValue(stored.astype("<u2").tobytes())
    image.SetDataElement(pixels)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(image)
    image.thisown = False
    if not change.Change():
        raise RuntimeError("GDCM could not encode the pixels as JPEG Lossless SV1")
    fragments = change.GetOutput().GetDataElement().GetSequenceOfFragments()
    return b"".join(
        fragments.GetFragment(i).GetByteValue().GetBuffer().encode("utf-8", "surrogateescape")
        for i in range(fragments.GetNumberOfFragments())
    )
