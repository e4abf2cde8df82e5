"""The algorithm as DICOM results name it, the same in the SR and the Secondary Capture.

IHE AI Results puts the model into the Contributing Equipment Sequence with the purpose of
reference (Newcode1, 99IHE, "Processing Algorithm") and a Device UID that changes with the model,
so a PACS or a reader can tell which model said what. highdicom builds the item but accepts only
DCM codes for the purpose, so IHE's code is set on the item it builds.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes

from clare_dist.encode.identity import MANUFACTURER, Algorithm
from clare_dist.result import INTENDED_USE

PROCESSING_ALGORITHM = ("Newcode1", "99IHE", "Processing Algorithm")


def algorithm_equipment(algorithm: Algorithm) -> hd.ContributingEquipment:
    """The model's item of the Contributing Equipment Sequence, with its Device UID."""
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algorithm.model_name,
        software_versions=algorithm.software_version,
        contribution_description=f"Model {algorithm.model_version}: {INTENDED_USE}",
    )
    equipment.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept(*PROCESSING_ALGORITHM)]
    equipment.DeviceUID = algorithm.device_uid
    return equipment
