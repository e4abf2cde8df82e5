"""The coded concepts of a result, one table for the DICOM SR and the FHIR resources.

A class that is one finding of the standard's own tables keeps its SNOMED CT code as pydicom
ships it (`pydicom.sr.codedict`: Cardiomegaly, Pneumothorax). The classes that group several
CXR14 findings (Pa, Pl, Ot) and the 26 combinations are not findings anyone else defines, so they
are codes of the project's private scheme, declared as such, each with the SNOMED CT finding site
it concerns; claiming a standard code for a group would be wrong. The README shows this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.codedict import codes

from clare_dist.labels import CLASS_FINDINGS, CLASSES, COMBINATIONS, NO_FINDING, combination_vector

PRIVATE_SCHEME = "99CLAREXR"  # DICOM's convention for a private scheme: "99" and a name
PRIVATE_SCHEME_NAME = "clare-dist CLARE-XR codes"
PRIVATE_SCHEME_URI = "urn:clare-dist:codes"  # the same scheme as a FHIR CodeSystem URI
SNOMED_SCHEME = "SCT"
SNOMED_URI = "http://snomed.info/sct"


@dataclass(frozen=True)
class Concept:
    """A coded concept: `scheme` is the DICOM Coding Scheme Designator (SCT, DCM, 99CLAREXR)."""

    value: str
    scheme: str
    meaning: str

    @property
    def system(self) -> str:
        """The FHIR `system` of the scheme."""
        return {SNOMED_SCHEME: SNOMED_URI, PRIVATE_SCHEME: PRIVATE_SCHEME_URI}.get(self.scheme, "http://dicom.nema.org/resources/ontology/DCM")


def _standard(code) -> Concept:
    return Concept(code.value, code.scheme_designator, code.meaning)


def _private(value: str, meaning: str) -> Concept:
    if len(value) > 16 or len(meaning) > 64:  # DICOM's Code Value (SH) and Code Meaning (LO)
        raise ValueError(f"code {value!r} or its meaning is too long for DICOM")
    return Concept(value, PRIVATE_SCHEME, meaning)


CLASS_CONCEPTS: dict[str, Concept] = {
    "Ca": _standard(codes.SCT.Cardiomegaly),
    "Pa": _private("Pa", "Parenchymal lung finding (CLARE-XR class Pa)"),
    "Pn": _standard(codes.SCT.Pneumothorax),
    "Pl": _private("Pl", "Pleural finding (CLARE-XR class Pl)"),
    "Ot": _private("Ot", "Other thoracic finding (CLARE-XR class Ot)"),
}
# What each grouped class holds, for the README's table and the FHIR CodeSystem text.
CLASS_MEMBERS: dict[str, str] = {code: ", ".join(CLASS_FINDINGS[code]).replace("_", " ") for code in CLASSES}
FINDING_SITES: dict[str, Concept] = {
    "Ca": _standard(codes.SCT.Heart),
    "Pa": _standard(codes.SCT.Lung),
    "Pn": _standard(codes.SCT.Pleura),
    "Pl": _standard(codes.SCT.Pleura),
    "Ot": _standard(codes.SCT.Thorax),
}
PRESENT = _standard(codes.SCT.Present)
ABSENT = _standard(codes.SCT.Absent)
YES = _standard(codes.SCT.Yes)
NO = _standard(codes.SCT.No)
DECISION = _private("decision", "CLARE-XR decision (R4 rule set): the combination of classes")
TOP3 = _private("top3", "Nearest reference combination")
DISTANCE = _private("distance", "Distance to the reference point")
COORDINATE_X = _private("x", "Predicted x coordinate in the CLARE-XR reference space")
COORDINATE_Y = _private("y", "Predicted y coordinate in the CLARE-XR reference space")
SIMILAR_CASE = _private("similar-case", "Similar known case")
EXPLANATION = _private("explanation", "CLARE-XR explanation")
NEEDS_REVIEW = _private("needs-review", "Needs human review: outside what the model knows")
OOD_SCORE = _private("ood-score", "Out-of-distribution score (review above 1)")


def combination_concept(name: str) -> Concept:
    """The private code of one of the 26 combinations (its name, e.g. "CaPnPl" or "No Finding")."""
    if name not in COMBINATIONS:
        raise ValueError(f"{name!r} is not one of the 26 combinations")
    if name == NO_FINDING:
        return _private(name, "No finding in any of the five classes")
    parts = [c for c, bit in zip(CLASSES, combination_vector(name)) if bit]
    return _private(name, "Findings in classes " + ", ".join(parts))
