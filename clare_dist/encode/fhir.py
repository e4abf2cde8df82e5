"""FHIR R4 output of one screened scan, for a RIS or an EHR: a Bundle of one report.

A RIS or EHR takes results as FHIR, not as DICOM or the API's JSON, so a screened scan becomes
one Bundle (type "collection": a set of resources, no Composition or signature as a "document"
would need) holding
- a DiagnosticReport, status "preliminary" (a screening aid's output, never a final read), whose
  `conclusion` is the explanation sentence, `conclusionCode` the decided combination, `result`
  the five Observations, and `imagingStudy` the scan's DICOM study, named by its Study Instance
  UID (a logical reference: no ImagingStudy resource is sent); absent for a PNG;
- one Observation per class (Ca, Pa, Pn, Pl, Ot), valued SNOMED CT present or absent: the R4
  decision bits, with the class's finding site;
- where the model checks it, an Observation "needs human review" valued SNOMED CT yes or no, its
  out-of-distribution score as a component (`clare_dist.ood`);
- a Device, the model that said it (model version, software version, DICOM Device UID), whose
  note carries the intended use; the report's narrative repeats it where a person reads it.

No resource has a `subject`: a result carries a scan id, never patient data, and R4 makes
DiagnosticReport.subject and Observation.subject optional (0..1). The receiver attaches the
patient it already knows from the study (profiles such as US Core require it; base R4 does not).

Every id is a name-based UUID of the model version, the scan id and the resource's role (the
Device's of the model version alone), so a rerun writes the same resources and the receiver
replaces them, while a new model writes new ones (as `identity` does for DICOM UIDs).

The resources are validated with the `fhir.resources` package's R4B models (`fhir.resources.R4B`;
its top level is R5). R4B is the R4 line and differs from R4 only in areas not used here
(R4B changed medication definition, subscriptions and evidence resources). Those models check
structure, types, cardinality and required elements but not required value-set bindings, so the
codes whose bindings are required are checked here too.
"""

from __future__ import annotations

import copy
import html
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from clare_dist.encode.codes import (
    ABSENT,
    CLASS_CONCEPTS,
    FINDING_SITES,
    NEEDS_REVIEW,
    NO,
    OOD_SCORE,
    PRESENT,
    YES,
    Concept,
    combination_concept,
)
from clare_dist.encode.identity import FHIR_IDS, MANUFACTURER, Algorithm, derived_uuid
from clare_dist.errors import ResultEncodingError
from clare_dist.labels import CLASSES
from clare_dist.result import INTENDED_USE, Screening

SCAN_ID_SYSTEM = "urn:clare-dist:scan-id"
MODEL_VERSION_SYSTEM = "urn:clare-dist:model-version"
DICOM_UID_SYSTEM = "urn:dicom:uid"
# The report's code: LOINC 18748-4 "Diagnostic imaging study", the generic imaging report. The
# chest X-ray codes (36554-4 "XR Chest Single view", 36643-5 "XR Chest 2 Views") name the study's
# views, which a screened image does not tell.
REPORT_CODE = {"coding": [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}],
               "text": "CLARE-XR chest X-ray screening"}
RADIOLOGY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}]}
IMAGING = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging",
                       "display": "Imaging"}]}
# Codes of required bindings (FHIR R4 value sets), which the fhir.resources models leave unchecked.
_REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Bundle", "type"): frozenset({"document", "message", "transaction", "transaction-response", "batch",
                                   "batch-response", "history", "searchset", "collection"}),
    ("DiagnosticReport", "status"): frozenset({"registered", "partial", "preliminary", "final", "amended", "corrected",
                                               "appended", "cancelled", "entered-in-error", "unknown"}),
    ("Observation", "status"): frozenset({"registered", "preliminary", "final", "amended", "corrected", "cancelled",
                                          "entered-in-error", "unknown"}),
}
_DEVICE_NAME_TYPES = frozenset({"udi-label-name", "user-friendly-name", "patient-reported-name", "manufacturer-name",
                                "model-name", "other"})


def _uuid(*parts: str) -> str:
    return str(derived_uuid(FHIR_IDS, *parts))


def _codeable(concept: Concept) -> dict[str, Any]:
    return {"coding": [{"system": concept.system, "code": concept.value, "display": concept.meaning}],
            "text": concept.meaning}


def _entry(resource_id: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{resource_id}",
            "resource": {"resourceType": resource["resourceType"], "id": resource_id, **resource}}


def _device(algorithm: Algorithm) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "identifier": [{"system": MODEL_VERSION_SYSTEM, "value": algorithm.model_version},
                       {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{algorithm.device_uid}"}],
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": algorithm.model_name, "type": "model-name"}],
        "version": [{"type": {"text": "software version"}, "value": algorithm.software_version},
                    {"type": {"text": "model version"}, "value": algorithm.model_version}],
        "note": [{"text": f"Intended use: {INTENDED_USE}"}],
    }


def _observation(code: str, bit: int, device_url: str) -> dict[str, Any]:
    if bit not in (0, 1):
        raise ResultEncodingError(f"class {code} has no decision bit (got {bit!r}); a screened scan has 0 or 1 for each class")
    return {
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [IMAGING],
        "code": _codeable(CLASS_CONCEPTS[code]),
        "valueCodeableConcept": _codeable(PRESENT if bit else ABSENT),
        "bodySite": _codeable(FINDING_SITES[code]),
        "device": {"reference": device_url, "type": "Device"},
    }


def _review_observation(screening: Screening, device_url: str) -> dict[str, Any]:
    """Whether the scan needs human review (outside what the model knows), its OOD score a component."""
    return {
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [IMAGING],
        "code": _codeable(NEEDS_REVIEW),
        "valueCodeableConcept": _codeable(YES if screening.needs_review else NO),
        "component": [{"code": _codeable(OOD_SCORE),
                       "valueQuantity": {"value": screening.ood_score, "unit": "1", "system": "http://unitsofmeasure.org",
                                         "code": "1"}}],
        "device": {"reference": device_url, "type": "Device"},
    }


def _narrative(screening: Screening) -> dict[str, Any]:
    text = html.escape(f"{screening.explanation} Preliminary result of {screening.model_version}; intended use: {INTENDED_USE}.",
                       quote=False)
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{text}</p></div>'}


def screening_bundle(screening: Screening, algorithm: Algorithm, study_uid: str | None = None) -> dict[str, Any]:
    """The FHIR R4 Bundle (plain JSON types) of a screened scan; `study_uid` is the DICOM Study
    Instance UID of the scan, None for a file that is not DICOM. Raises ResultEncodingError for a
    scan that was not screened or a model that is not the one that screened it."""
    if not screening.ok:
        raise ResultEncodingError(f"scan {screening.scan_id} was not screened ({screening.error_kind}: "
                                f"{screening.error_reason}); a failed scan has no FHIR report")
    if screening.model_version != algorithm.model_version:
        raise ResultEncodingError(f"scan {screening.scan_id} was screened by {screening.model_version}, "
                                f"not by the model {algorithm.model_version} given as its Device")
    if not screening.combination or not screening.explanation:
        raise ResultEncodingError(f"scan {screening.scan_id} has no decision or no explanation to report")
    scan = (screening.model_version, screening.scan_id)
    device = _entry(_uuid("device", algorithm.model_version), _device(algorithm))
    observations = [_entry(_uuid(*scan, "observation", code), _observation(code, bit, device["fullUrl"]))
                    for code, bit in screening.classes.items()]
    if screening.needs_review is not None:
        observations.append(_entry(_uuid(*scan, "observation", "review"), _review_observation(screening, device["fullUrl"])))
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "text": _narrative(screening),
        "identifier": [{"system": SCAN_ID_SYSTEM, "value": screening.scan_id}],
        "status": "preliminary",
        "category": [RADIOLOGY],
        "code": REPORT_CODE,
        "result": [{"reference": o["fullUrl"], "type": "Observation"} for o in observations],
        "conclusion": screening.explanation,
        "conclusionCode": [_codeable(combination_concept(screening.combination))],
    }
    if study_uid is not None:
        report["imagingStudy"] = [{"type": "ImagingStudy",
                                   "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}}]
    bundle = {"resourceType": "Bundle", "id": _uuid(*scan, "bundle"), "type": "collection",
              "entry": [_entry(_uuid(*scan, "report"), report), *observations, device]}
    validate_bundle(bundle)
    return copy.deepcopy(bundle)  # shares no dict with the constants here, so a caller may edit it


def validate_bundle(doc: dict[str, Any]) -> None:
    """Raise ResultEncodingError unless `doc` is a valid FHIR R4 Bundle (the R4B models of
    fhir.resources, and the required codes they leave unchecked)."""
    try:
        Bundle.model_validate(doc)
    except ValidationError as error:
        raise ResultEncodingError(f"not a valid FHIR R4 Bundle: {error}") from error
    resources = [doc] + [e.get("resource") or {} for e in doc.get("entry") or []]
    for resource in resources:
        for (kind, name), allowed in _REQUIRED_CODES.items():
            if resource.get("resourceType") == kind and resource.get(name) not in allowed:
                raise ResultEncodingError(f"not a valid FHIR R4 Bundle: {kind}.{name} {resource.get(name)!r} "
                                        f"is not one of {sorted(allowed)}")
        names = resource.get("deviceName") or [] if resource.get("resourceType") == "Device" else []
        for name in names:
            if name.get("type") not in _DEVICE_NAME_TYPES:
                raise ResultEncodingError(f"not a valid FHIR R4 Bundle: Device.deviceName.type {name.get('type')!r} "
                                        f"is not one of {sorted(_DEVICE_NAME_TYPES)}")


def _code_of(concept: dict[str, Any]) -> tuple[str, str]:
    coding = (concept.get("coding") or [{}])[0]
    return coding.get("system", ""), coding.get("code", "")


def bundle_decision(bundle: dict[str, Any]) -> dict[str, Any]:
    """What a Bundle of `screening_bundle` says: {"decision", "classes" (code: 0/1),
    "explanation", "needs_review", "ood_score", "model_version"}, read from its resources (for checks
    against the JSON)."""
    by_url = {e["fullUrl"]: e["resource"] for e in bundle.get("entry") or []}
    kinds: dict[str, list[dict[str, Any]]] = {}
    for resource in by_url.values():
        kinds.setdefault(resource["resourceType"], []).append(resource)
    if len(kinds.get("DiagnosticReport", [])) != 1 or len(kinds.get("Device", [])) != 1:
        raise ResultEncodingError("a screening Bundle holds exactly one DiagnosticReport and one Device")
    report, device = kinds["DiagnosticReport"][0], kinds["Device"][0]
    class_of = {(c.system, c.value): code for code, c in CLASS_CONCEPTS.items()}
    bit_of = {(PRESENT.system, PRESENT.value): 1, (ABSENT.system, ABSENT.value): 0}
    classes: dict[str, int] = {}
    review: dict[str, Any] = {"needs_review": None, "ood_score": None}
    for ref in report.get("result") or []:
        observation = by_url.get(ref.get("reference", ""))
        if observation is None:
            raise ResultEncodingError(f"the report's result {ref.get('reference')!r} is not in the Bundle")
        code, value = _code_of(observation.get("code") or {}), _code_of(observation.get("valueCodeableConcept") or {})
        if code == (NEEDS_REVIEW.system, NEEDS_REVIEW.value):
            (component,) = observation.get("component") or [{}]
            review = {"needs_review": {YES.value: True, NO.value: False}[value[1]],
                      "ood_score": (component.get("valueQuantity") or {}).get("value")}
            continue
        if code not in class_of or value not in bit_of:
            raise ResultEncodingError(f"result {ref['reference']} is not a CLARE-XR class valued present or absent")
        classes[class_of[code]] = bit_of[value]
    if sorted(classes) != sorted(CLASSES):
        raise ResultEncodingError(f"the report holds results for {sorted(classes)}, not one for each of {list(CLASSES)}")
    versions = [i["value"] for i in device.get("identifier") or [] if i.get("system") == MODEL_VERSION_SYSTEM]
    return {
        "decision": _code_of((report.get("conclusionCode") or [{}])[0])[1],
        "classes": {code: classes[code] for code in CLASSES},
        "explanation": report.get("conclusion"),
        **review,
        "model_version": versions[0] if versions else None,
    }
