"""The explanation picture of one screened DICOM scan as a DICOM Secondary Capture image.

A reader sees results in the PACS viewer (OHIF and the like), which shows images, not JSON or
SR trees. So the picture `clare_dist.plots.explanation_figure` draws for a scan goes back into
the scan's own study as a Secondary Capture: the same Study Instance UID, the patient and study
modules copied by highdicom (`SCImage.from_ref_dataset`) and nothing else of the patient, a
series of its own, and the algorithm named as manufacturer and contributing equipment (IHE AIR:
Newcode1 "Processing Algorithm" with the model's Device UID), as the SR names it.

The picture already prints the intended use and the model version; they are burned into the
pixels, so the image says BurnedInAnnotation YES. It is stored as JPEG Baseline, the one
compressed colour syntax every viewer decodes, as YBR_FULL_422 (highdicom accepts no other
photometric interpretation for it). Its UIDs derive from the model version and the source's UIDs: a rerun replaces
the same instance in the PACS, a new model writes a new one. This module draws nothing and needs
no matplotlib: it takes the picture as pixels (`clare_dist.plots.figure_rgb`).
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from clare_dist.encode.dicom_equipment import algorithm_equipment
from clare_dist.encode.dicom_source import check_copied_values
from clare_dist.encode.identity import MANUFACTURER, Algorithm, derived_uid
from clare_dist.errors import ResultEncodingError
from clare_dist.result import INTENDED_USE, Screening

SERIES_DESCRIPTION = "CLARE-XR explanation (research)"
SERIES_NUMBER = 990  # high, so viewers list the explanation after the acquired series
JPEG_METHOD = "ISO_10918_1"  # Lossy Image Compression Method of JPEG Baseline
JPEG_QUALITY = 95  # as highdicom encodes: small print stays legible
_REQUIRED = ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID")


def explanation_sc(screening: Screening, source: Dataset, picture: np.ndarray, algorithm: Algorithm) -> Dataset:
    """The Secondary Capture of `picture` (H×W×3 uint8 RGB, the explanation figure of `screening`)
    in the study of `source` (the screened image's header; no pixels needed), ready for
    `pydicom.dcmwrite(..., enforce_file_format=True)`.

    Refused (ResultEncodingError): a failed screening, a screening by another model than
    `algorithm`, a source without Study Instance, SOP Instance or SOP Class UID or with patient or
    study values highdicom rejects (a Patient's Sex outside M/F/O), a picture of another shape or type.
    """
    if not screening.ok:
        raise ResultEncodingError(
            f"scan could not be screened ({screening.error_kind}): there is no explanation picture to encode")
    if screening.model_version != algorithm.model_version:
        raise ResultEncodingError(f"the screening is by model {screening.model_version}, "
                                    f"not by the algorithm {algorithm.model_version} it would be filed under")
    missing = [keyword for keyword in _REQUIRED if not source.get(keyword)]
    if missing:
        raise ResultEncodingError(f"the source DICOM has no {', '.join(missing)}: "
                                    "its explanation cannot be filed in its study")
    if not (isinstance(picture, np.ndarray) and picture.dtype == np.uint8 and picture.ndim == 3
            and picture.shape[2] == 3 and picture.shape[0] > 0 and picture.shape[1] > 0):
        described = f"{picture.dtype} of shape {picture.shape}" if isinstance(picture, np.ndarray) else type(picture).__name__
        raise ResultEncodingError(f"the picture must be an H×W×3 uint8 RGB array, got {described}")

    version = algorithm.model_version
    check_copied_values(source)
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=np.ascontiguousarray(picture),
            photometric_interpretation=hd.PhotometricInterpretationValues.YBR_FULL_422,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=derived_uid("sc-series", version, str(source.StudyInstanceUID)),
            series_number=SERIES_NUMBER,
            sop_instance_uid=derived_uid("sc", version, str(source.SOPInstanceUID)),
            instance_number=1,
            manufacturer=MANUFACTURER,
            # highdicom wants an orientation for PATIENT; a figure has none, so it is emptied below.
            patient_orientation=("L", "F"),
            transfer_syntax_uid=JPEGBaseline8Bit,
            contributing_equipment=[algorithm_equipment(algorithm)],
            series_description=SERIES_DESCRIPTION,
            manufacturer_model_name=algorithm.model_name,
            software_versions=algorithm.software_version,
        )
    except (ValueError, TypeError) as error:  # a patient or study value of the source that DICOM does not allow
        raise ResultEncodingError(
            f"the source DICOM's patient or study module holds a value DICOM does not allow ({type(error).__name__}); "
            "check its patient and study attributes in the PACS (the value is not repeated here: it may be patient data)"
        ) from error
    sc.BodyPartExamined = "CHEST"  # what CLARE-XR screens; an unpaired part, so no Laterality
    sc.PatientOrientation = None  # Type 2, empty: the picture's rows and columns are no patient directions
    sc.ConversionType = "WSD"  # drawn on a workstation, not digitised
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = (f"Explanation picture drawn by {algorithm.model_name}, model {version}, "
                                f"from the source image: {INTENDED_USE}.")
    sc.SourceImageSequence = [_reference(source)]
    sc.BurnedInAnnotation = "YES"  # the intended use, the model version and the decision are in the pixels
    frame = _jpeg_422(picture)  # replaces highdicom's 4:2:0 frame; see _jpeg_422
    sc.PixelData = encapsulate([frame])
    sc.LossyImageCompression = "01"
    sc.LossyImageCompressionRatio = f"{picture.size / len(frame):.2f}"
    sc.LossyImageCompressionMethod = JPEG_METHOD
    return sc


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _jpeg_422(picture: np.ndarray) -> bytes:
    """JPEG Baseline of the RGB picture with chroma halved horizontally only, as YBR_FULL_422 says.

    highdicom's own encoder leaves Pillow's default, 4:2:0, under the same label; viewers decode
    either, but the stream should be what the header declares.
    """
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:2")
    return buffer.getvalue()
