"""The screening of one DICOM scan as a DICOM Structured Report that a hospital's PACS files and reads.

A PACS, a reporting worklist or an AI orchestrator does not read our JSON; it reads DICOM, and
for AI results the profile they implement is IHE AI Results (AIR): a Comprehensive 3D SR whose
root is TID 1500 "Measurement Report", filed in the source study (same Study Instance UID, a
series of its own), referencing the screened image, with the algorithm named in the Contributing
Equipment Sequence (Newcode1 "Processing Algorithm", its Device UID) and as the device observer.
highdicom builds the tree and copies the patient and study modules from the source and nothing
else of the patient, so the SR adds no patient data; a source lacking what those modules require
is refused by name rather than completed with made-up values.

What the JSON says, the SR says, in one TID 1501 group: the five classes and the decision as
coded qualitative evaluations, the coordinates and the top 3 distances as unitless numbers
(UCUM "1"; the exact float rides in Floating Point Value next to the 16-character DS), the top 3
references, the explanation sentence and the similar cases' identifiers as the TEXT and CODE
evaluations TID 1501 allows; and, where the model checks it, whether the scan needs human review
(a coded yes/no: outside what the model knows) with its out-of-distribution score. The i-th top 3 distance belongs to the i-th top 3 reference: the
content tree keeps order. `sr_findings` reads a stored SR back through highdicom into the JSON's
shape, so tests and later code can prove both say the same.

UIDs derive from the model version and the source's UIDs (`identity.derived_uid`): a rerun
replaces the same instance in the PACS, a new model files a new one. Only the content date and
time change between reruns: they record when the report was made.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from clare_dist.encode.codes import (
    ABSENT,
    CLASS_CONCEPTS,
    COORDINATE_X,
    COORDINATE_Y,
    DECISION,
    DISTANCE,
    EXPLANATION,
    NEEDS_REVIEW,
    NO,
    OOD_SCORE,
    PRESENT,
    PRIVATE_SCHEME,
    PRIVATE_SCHEME_NAME,
    SIMILAR_CASE,
    TOP3,
    YES,
    Concept,
    combination_concept,
)
from clare_dist.encode.dicom_equipment import PROCESSING_ALGORITHM, algorithm_equipment
from clare_dist.encode.dicom_source import check_copied_values
from clare_dist.encode.identity import MANUFACTURER, Algorithm, derived_uid
from clare_dist.errors import ResultEncodingError
from clare_dist.labels import CLASSES
from clare_dist.result import Screening

SERIES_DESCRIPTION = "CLARE-XR screening (research)"
SERIES_NUMBER = 991  # next to the explanation picture's series (990), after the acquired ones
INSTANCE_NUMBER = 1
TRACKING_IDENTIFIER = "CLARE-XR screening"
# The procedure reported when the source names none: SNOMED CT's "Chest imaging (procedure)", the
# most specific chest radiography procedure pydicom's code dictionary holds.
CHEST_IMAGING = codes.SCT.ChestImaging
NO_UNITS = codes.UCUM.NoUnits  # UCUM "1": coordinates and distances of the reference space
# What highdicom reads from the source for the patient, study and evidence modules and the image
# reference; True: must have a value (Type 1 there), False: may be empty (Type 2) but must be
# present. (An absent Referring Physician's Name highdicom writes empty, as DICOM allows.)
_SOURCE_ATTRIBUTES = {
    "StudyInstanceUID": True, "SeriesInstanceUID": True, "SOPInstanceUID": True, "SOPClassUID": True,
    "Modality": True, "Rows": True, "PatientID": False, "PatientName": False, "PatientBirthDate": False,
    "PatientSex": False, "StudyDate": False, "StudyTime": False, "AccessionNumber": False, "StudyID": False,
}


def screening_sr(screening: Screening, source: Dataset, algorithm: Algorithm) -> hd.sr.Comprehensive3DSR:
    """The SR of `screening` in the study of `source` (the screened image's header; no pixels needed),
    ready for `sr.save_as(path, enforce_file_format=True)`.

    Refused (ResultEncodingError): a failed or incomplete screening, a screening by another model
    than `algorithm`, a source lacking an attribute highdicom needs (named in the message).
    """
    _check(screening, source, algorithm)
    check_copied_values(source)
    try:
        return _report(screening, source, algorithm)
    except (ValueError, TypeError, AttributeError) as error:  # highdicom refuses a value copied from the source
        raise ResultEncodingError(
            f"the source DICOM's patient or study module holds a value DICOM does not allow ({type(error).__name__}); "
            "check its patient and study attributes in the PACS (the value is not repeated here: it may be patient data)"
        ) from error


def _report(screening: Screening, source: Dataset, algorithm: Algorithm) -> hd.sr.Comprehensive3DSR:
    version = algorithm.model_version
    checked = screening.needs_review is not None  # a bundle without the OOD score says nothing of it
    review = [hd.sr.QualitativeEvaluation(_coded(NEEDS_REVIEW), _coded(YES if screening.needs_review else NO))] if checked else []
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("sr-tracking", version, str(source.SOPInstanceUID)), identifier=TRACKING_IDENTIFIER),
        finding_sites=[hd.sr.FindingSite(codes.SCT.Chest)],
        algorithm_id=hd.sr.AlgorithmIdentification(name=algorithm.model_name, version=version,
                                                   manufacturer=MANUFACTURER),
        measurements=[_number(COORDINATE_X, screening.x), _number(COORDINATE_Y, screening.y)]
        + [_number(DISTANCE, d) for d in screening.top3_distances]
        + ([_number(OOD_SCORE, screening.ood_score)] if checked else []),
        qualitative_evaluations=[
            *(hd.sr.QualitativeEvaluation(_coded(CLASS_CONCEPTS[c]), _coded(PRESENT if bit else ABSENT))
              for c, bit in screening.classes.items()),
            hd.sr.QualitativeEvaluation(_coded(DECISION), _coded(combination_concept(screening.combination))),
            *(hd.sr.QualitativeEvaluation(_coded(TOP3), _coded(combination_concept(name))) for name in screening.top3),
            *review,
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    texts = [(EXPLANATION, screening.explanation)] if screening.explanation else []
    texts += [(SIMILAR_CASE, case.case_id) for case in screening.similar_cases]
    group[0].ContentSequence.extend(
        hd.sr.TextContentItem(_coded(name), value, hd.sr.RelationshipTypeValues.CONTAINS) for name, value in texts)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid, name=algorithm.model_name, manufacturer_name=MANUFACTURER,
        model_name=algorithm.model_name)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device)),
        procedure_reported=_procedures(source),
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report,
        series_instance_uid=derived_uid("sr-series", version, str(source.StudyInstanceUID)),
        series_number=SERIES_NUMBER,
        sop_instance_uid=derived_uid("sr", version, str(source.SOPInstanceUID)),
        instance_number=INSTANCE_NUMBER,
        manufacturer=MANUFACTURER,
        is_complete=True,  # all the screening says; unverified and preliminary: no person signed it
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=algorithm.model_name,
        software_versions=algorithm.software_version,
        contributing_equipment=[algorithm_equipment(algorithm)],
        coding_schemes=[  # the private schemes its codes use (0008,0110)
            CodingSchemeIdentificationItem(PRIVATE_SCHEME, name=PRIVATE_SCHEME_NAME, responsible_organization=MANUFACTURER),
            CodingSchemeIdentificationItem(PROCESSING_ALGORITHM[1], name="IHE codes",
                                           responsible_organization="IHE International"),
        ],
    )


def sr_findings(sr: Dataset) -> dict[str, Any]:
    """What an SR written by `screening_sr` says, read back through highdicom in the shape of the
    API answer's decision part (`api_json.api_answer`), similar cases as their identifiers."""
    try:
        groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    except (AttributeError, ValueError) as error:
        raise ResultEncodingError(f"not a TID 1500 Measurement Report: {error}") from error
    if len(groups) != 1:
        raise ResultEncodingError(f"a CLARE-XR SR has one image measurement group, this one has {len(groups)}")
    group = groups[0]

    def codes_of(concept: Concept) -> list[str]:
        return [e.value.value for e in group.get_qualitative_evaluations(_coded(concept))]

    def numbers(concept: Concept) -> list[float]:
        return [m.value for m in group.get_measurements(_coded(concept))]

    def texts(concept: Concept) -> list[str]:
        return [item.value for item in find_content_items(group[0], name=_coded(concept),
                                                           value_type=hd.sr.ValueTypeValues.TEXT)]

    def bit(code: str) -> int:
        (value,) = codes_of(CLASS_CONCEPTS[code])
        return {PRESENT.value: 1, ABSENT.value: 0}[value]

    (decision,), (x,), (y,) = codes_of(DECISION), numbers(COORDINATE_X), numbers(COORDINATE_Y)
    review, scores = codes_of(NEEDS_REVIEW), numbers(OOD_SCORE)
    return {
        "decision": decision,
        "classes": {code: bit(code) for code in CLASSES},
        "top3": [{"combination": name, "distance": d}
                 for name, d in zip(codes_of(TOP3), numbers(DISTANCE), strict=True)],
        "coordinates": {"x": x, "y": y},
        "explanation": next(iter(texts(EXPLANATION)), None),
        "similar_cases": texts(SIMILAR_CASE),
        "needs_review": {YES.value: True, NO.value: False}[review[0]] if review else None,
        "ood_score": scores[0] if scores else None,
    }


def _check(screening: Screening, source: Dataset, algorithm: Algorithm) -> None:
    if not screening.ok:
        raise ResultEncodingError(f"scan could not be screened ({screening.error_kind}): it has no result to report")
    if screening.model_version != algorithm.model_version:
        raise ResultEncodingError(f"the screening is by model {screening.model_version}, "
                                  f"not by the algorithm {algorithm.model_version} it would be filed under")
    blanks = [c for c, bit in screening.classes.items() if bit not in (0, 1)]
    if blanks or screening.combination is None or screening.x is None or screening.y is None \
            or len(screening.top3) != len(screening.top3_distances):
        raise ResultEncodingError(f"scan {screening.scan_id}'s screening is incomplete (classes {blanks or 'set'}, "
                                  f"decision {screening.combination}, point ({screening.x}, {screening.y}), "
                                  f"{len(screening.top3)} top 3 names, {len(screening.top3_distances)} distances)")
    missing = [k for k, needs_value in _SOURCE_ATTRIBUTES.items()
               if k not in source or (needs_value and not source.get(k))]
    if missing:
        raise ResultEncodingError(
            f"the source DICOM lacks {', '.join(missing)}: the SR copies the patient and study modules "
            "from it and invents none of them (an attribute may be empty where DICOM allows, but present)")


def _coded(concept: Concept) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(concept.value, concept.scheme, concept.meaning)


def _number(concept: Concept, value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=_coded(concept), value=float(value), unit=NO_UNITS)


def _procedures(source: Dataset) -> list[hd.sr.CodedConcept]:
    """The source's own procedure codes where it has them, else chest imaging."""
    return [hd.sr.CodedConcept.from_dataset(item) for item in source.get("ProcedureCodeSequence") or []] \
        or [hd.sr.CodedConcept.from_code(CHEST_IMAGING)]
