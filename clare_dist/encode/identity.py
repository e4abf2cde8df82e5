"""Who made a result, and the names of what it writes: the same on every rerun.

A PACS keys objects by UID and an EHR by identifier. A rerun of the same model on the same scan
must write objects with the same UIDs, so the PACS replaces them instead of filing a second
opinion beside the first; a new model must write new ones. So every UID here is derived, as a
name-based UUID under the `2.25.` root (DICOM PS3.5 B.2), from the model version and the source's
own UID, and never drawn at random.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import clare_dist

MANUFACTURER = "clare-dist project"
ALGORITHM_NAME = "CLARE-XR"
# The namespaces of the name-based UUIDs clare-dist derives; fixed forever, or rerun UIDs and ids change.
DICOM_UIDS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:clare-dist:dicom-uids")
FHIR_IDS = uuid.uuid5(uuid.NAMESPACE_URL, "urn:clare-dist:fhir-ids")


def derived_uuid(namespace: uuid.UUID, *parts: str) -> uuid.UUID:
    """The name-based UUID (version 5) of `parts` in `namespace`: the same parts, the same UUID."""
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError(f"a derived UID needs non-empty string parts; got {parts!r}")
    return uuid.uuid5(namespace, chr(31).join(parts))


def derived_uid(*parts: str) -> str:
    """A DICOM UID (at most 64 characters) determined by `parts` alone."""
    return f"2.25.{derived_uuid(DICOM_UIDS, *parts).int}"


@dataclass(frozen=True)
class Algorithm:
    """The model that screened a scan, as the results identify it (the Contributing Equipment
    Sequence of the SR and SC, the FHIR Device)."""

    model_version: str
    backbone: str
    software_version: str = clare_dist.__version__

    @property
    def model_name(self) -> str:
        return f"{ALGORITHM_NAME} {self.backbone}"

    @property
    def device_uid(self) -> str:
        """Changes whenever the model changes (IHE AIR: the Device UID of the algorithm)."""
        return derived_uid("device", self.model_version)


def algorithm_of(bundle) -> Algorithm:
    """The identity of a loaded model bundle (`clare_dist.bundle.Bundle`)."""
    return Algorithm(model_version=bundle.model_version, backbone=str(bundle.manifest["backbone"]))
