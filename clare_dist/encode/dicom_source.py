"""What the SR and the Secondary Capture copy from the screened image, checked before they copy it.

Both objects carry the source's patient and study modules, as DICOM requires of an object filed
in a study. A source value that DICOM does not allow (a date that is not a date, a code string with
lower case) would make pydicom warn with the value in its log and highdicom raise with it in its
message; a patient's data must be in neither. So every copied element is validated here first, and
a bad one is refused by its name alone.
"""

from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

from clare_dist.errors import ResultEncodingError

COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
          "AccessionNumber", "StudyID", "ReferringPhysicianName", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
          "Modality")


def check_copied_values(source: Dataset) -> None:
    """Raise ResultEncodingError naming every copied element of `source` whose value DICOM does not allow."""
    invalid = []
    for keyword in COPIED:
        element = source.get(keyword)
        if element is None or element in ("", None):
            continue
        values = element if isinstance(element, (list, tuple, pydicom.multival.MultiValue)) else [element]
        try:
            for value in values:
                validate_value(source[keyword].VR, value, pydicom.config.RAISE)
        except (ValueError, TypeError):
            invalid.append(keyword)
    if invalid:
        raise ResultEncodingError(f"the source DICOM's {', '.join(invalid)} hold(s) a value DICOM does not allow; correct "
                                  "it in the PACS (the value is not repeated here: it may be patient data)")
