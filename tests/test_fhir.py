"""The FHIR R4 Bundle of a screened scan: valid R4 (R4B models of fhir.resources), the report and
its five class Observations say what the API's JSON says, no patient is invented, and a rerun
writes the same ids while another model or another scan writes new ones."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from clare_dist.encode.api_json import api_answer
from clare_dist.encode.codes import ABSENT, CLASS_CONCEPTS, PRESENT, combination_concept
from clare_dist.encode.fhir import bundle_decision, screening_bundle, validate_bundle
from clare_dist.encode.identity import Algorithm
from clare_dist.errors import ClareError, ResultEncodingError
from clare_dist.explanation import explanation
from clare_dist.labels import CLASSES, COMBINATIONS, combination_vector
from clare_dist.result import INTENDED_USE, Screening

STUDY_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"
ALGORITHM = Algorithm(model_version="clare-xr-2024.1", backbone="resnet50")
# decision -> top 3 references, as R4 could give them
CASES = {"No Finding": ["No Finding", "Pa", "Pl"], "Pn": ["Pn", "PaPn", "No Finding"],
         "CaPl": ["Pl", "CaPl", "CaPnPl"], "PaPnOt": ["PaPn", "PaPnOt", "Ot"]}


def screened(decision: str, scan_id: str = "images/00000013_005.png", model_version: str = ALGORITHM.model_version) -> Screening:
    assert decision in COMBINATIONS
    top3 = CASES[decision]
    bits = dict(zip(CLASSES, (int(b) for b in combination_vector(decision))))
    return Screening(scan_id=scan_id, model_version=model_version, x=0.25, y=-0.5, top3=top3,
                     top3_distances=[0.0625, 0.125, 0.5], combination=decision, explanation=explanation(top3, decision),
                     **bits)


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def report_of(bundle: dict[str, Any]) -> dict[str, Any]:
    (report,) = resources(bundle, "DiagnosticReport")
    return report


def coding(concept: dict[str, Any]) -> tuple[str, str]:
    (first,) = concept["coding"]
    return first["system"], first["code"]


def keys(value: Any) -> set[str]:
    """Every key anywhere in a JSON value."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys(v)}
    return set()


@pytest.mark.parametrize("decision", list(CASES))
def test_the_bundle_is_valid_r4_and_plain_json(decision: str) -> None:
    bundle = screening_bundle(screened(decision), ALGORITHM, STUDY_UID)
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection" and len(parsed.entry) == 1 + len(CLASSES) + 1
    assert json.loads(json.dumps(bundle)) == bundle
    assert all(e["fullUrl"] == f"urn:uuid:{e['resource']['id']}" for e in bundle["entry"])


@pytest.mark.parametrize("decision", list(CASES))
def test_one_observation_per_class_valued_as_the_decision_bit(decision: str) -> None:
    screening = screened(decision)
    bundle = screening_bundle(screening, ALGORITHM, STUDY_UID)
    observations = resources(bundle, "Observation")
    concepts = {(c.system, c.value): code for code, c in CLASS_CONCEPTS.items()}
    by_class = {concepts[coding(o["code"])]: o for o in observations}
    assert sorted(by_class) == sorted(CLASSES) and len(observations) == len(CLASSES)
    (device,) = resources(bundle, "Device")
    for code, observation in by_class.items():
        expected = PRESENT if screening.classes[code] == 1 else ABSENT
        assert coding(observation["valueCodeableConcept"]) == (expected.system, expected.value)
        assert observation["status"] == "preliminary"
        assert observation["device"]["reference"] == f"urn:uuid:{device['id']}"
    assert {r["reference"] for r in report_of(bundle)["result"]} == {f"urn:uuid:{o['id']}" for o in observations}


@pytest.mark.parametrize("decision", list(CASES))
def test_the_report_is_preliminary_with_the_sentence_and_the_combination(decision: str) -> None:
    screening = screened(decision)
    report = report_of(screening_bundle(screening, ALGORITHM, STUDY_UID))
    assert report["status"] == "preliminary"
    assert report["conclusion"] == screening.explanation
    concept = combination_concept(decision)
    assert [coding(c) for c in report["conclusionCode"]] == [(concept.system, decision)]
    assert report["identifier"] == [{"system": "urn:clare-dist:scan-id", "value": screening.scan_id}]
    assert INTENDED_USE in report["text"]["div"]


def test_the_study_is_referenced_by_its_uid_and_left_out_without_one() -> None:
    with_study = report_of(screening_bundle(screened("CaPl"), ALGORITHM, STUDY_UID))
    assert with_study["imagingStudy"] == [{"type": "ImagingStudy",
                                           "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}}]
    assert "imagingStudy" not in report_of(screening_bundle(screened("CaPl"), ALGORITHM))


def test_no_patient_is_invented() -> None:
    bundle = screening_bundle(screened("PaPnOt"), ALGORITHM, STUDY_UID)
    assert not keys(bundle) & {"subject", "patient", "encounter"}
    assert not [e for e in bundle["entry"] if e["resource"]["resourceType"] in ("Patient", "Group")]


def test_the_device_is_the_model_with_its_intended_use() -> None:
    (device,) = resources(screening_bundle(screened("Pn"), ALGORITHM), "Device")
    assert {"system": "urn:clare-dist:model-version", "value": ALGORITHM.model_version} in device["identifier"]
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{ALGORITHM.device_uid}"} in device["identifier"]
    assert device["deviceName"] == [{"name": ALGORITHM.model_name, "type": "model-name"}]
    assert ALGORITHM.software_version in [v["value"] for v in device["version"]]
    assert any(INTENDED_USE in n["text"] for n in device["note"])


def ids(bundle: dict[str, Any]) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {"Bundle": [bundle["id"]]}
    for entry in bundle["entry"]:
        kinds.setdefault(entry["resource"]["resourceType"], []).extend([entry["fullUrl"], entry["resource"]["id"]])
    return kinds


def test_ids_are_the_same_on_rerun_and_new_for_another_model_or_scan() -> None:
    first = ids(screening_bundle(screened("CaPl"), ALGORITHM, STUDY_UID))
    assert ids(screening_bundle(screened("CaPl"), ALGORITHM, STUDY_UID)) == first
    other_model = Algorithm(model_version="clare-xr-2024.2", backbone="resnet50")
    new_model = ids(screening_bundle(screened("CaPl", model_version=other_model.model_version), other_model, STUDY_UID))
    new_scan = ids(screening_bundle(screened("CaPl", scan_id="images/00000014_000.png"), ALGORITHM, STUDY_UID))
    every = {i for group in first.values() for i in group}
    assert every.isdisjoint(i for group in new_model.values() for i in group)
    # the Device is the model's, one for all its scans; every resource about the scan is new
    assert new_scan["Device"] == first["Device"]
    assert every.isdisjoint(i for kind, group in new_scan.items() if kind != "Device" for i in group)
    assert len(every) == 2 * (1 + len(CLASSES) + 1) + 1  # no two resources share an id


@pytest.mark.parametrize("decision", list(CASES))
@pytest.mark.parametrize("review", [(None, None), (True, 3.25), (False, 0.5)], ids=["unchecked", "flagged", "within"])
def test_the_fhir_says_what_the_api_json_says(decision: str, review) -> None:
    needs, score = review
    screening = dataclasses.replace(screened(decision), needs_review=needs, ood_score=score)
    answer = api_answer(screening, request_id="r-1")
    bundle = screening_bundle(screening, ALGORITHM, STUDY_UID)
    read = bundle_decision(bundle)
    assert read == {"decision": answer["decision"], "classes": answer["classes"], "explanation": answer["explanation"],
                    "needs_review": answer["needs_review"], "ood_score": answer["ood_score"],
                    "model_version": answer["model_version"]}
    assert len(resources(bundle, "Observation")) == len(CLASSES) + (needs is not None)


def test_a_failed_scan_or_another_model_is_refused() -> None:
    failed = Screening.failed("broken.dcm", "bad_header", "the DICOM Rows holds 2 values", ALGORITHM.model_version)
    with pytest.raises(ResultEncodingError, match="broken.dcm was not screened"):
        screening_bundle(failed, ALGORITHM)
    with pytest.raises(ResultEncodingError, match="screened by other-model"):
        screening_bundle(screened("Pn", model_version="other-model"), ALGORITHM)
    assert issubclass(ResultEncodingError, ClareError) and issubclass(ResultEncodingError, ValueError)


def broken(change) -> dict[str, Any]:
    bundle = copy.deepcopy(screening_bundle(screened("CaPl"), ALGORITHM, STUDY_UID))
    change(bundle)
    return bundle


def observation(bundle: dict[str, Any]) -> dict[str, Any]:
    return resources(bundle, "Observation")[0]


@pytest.mark.parametrize("change, message", [
    (lambda b: observation(b).pop("status"), "status"),  # a required element missing
    (lambda b: observation(b).update(valueBoolean=True), "value"),  # two choices of value[x]
    (lambda b: observation(b).update(valueFoo=1), "valueFoo"),  # an element R4 does not have
    (lambda b: report_of(b).update(conclusion=["two", "strings"]), "conclusion"),  # a wrong type
    (lambda b: observation(b).update(status="probably"), "Observation.status 'probably'"),  # a code outside the value set
    (lambda b: report_of(b).update(status="draft"), "DiagnosticReport.status 'draft'"),
    (lambda b: b.update(type="bag"), "Bundle.type 'bag'"),
    (lambda b: resources(b, "Device")[0]["deviceName"][0].update(type="nickname"), "deviceName.type 'nickname'"),
])
def test_validation_rejects_a_broken_bundle(change, message: str) -> None:
    validate_bundle(broken(lambda b: None))  # the unbroken one passes
    with pytest.raises(ResultEncodingError, match="not a valid FHIR R4 Bundle") as refused:
        validate_bundle(broken(change))
    assert message in str(refused.value)


def test_reading_back_refuses_a_bundle_that_is_not_a_screening() -> None:
    def drop_result(b: dict[str, Any]) -> None:
        report_of(b)["result"].pop()

    with pytest.raises(ResultEncodingError, match="not one for each"):
        bundle_decision(broken(drop_result))
    with pytest.raises(ResultEncodingError, match="exactly one DiagnosticReport"):
        bundle_decision(broken(lambda b: b["entry"].pop(0)))
