"""The HTTP API's answer for a screened scan: the decision first, then why."""

from __future__ import annotations

from typing import Any

from clare_dist.result import INTENDED_USE, Screening, SimilarCase


def api_answer(screening: Screening, request_id: str) -> dict[str, Any]:
    """The JSON body of a 200 answer (the OpenAPI document describes it as `Screening`)."""
    if not screening.ok:
        raise ValueError(f"scan {screening.scan_id} was not screened ({screening.error_kind}); it is answered as an error")
    return {
        "request_id": request_id,
        "model_version": screening.model_version,
        "decision": screening.combination,
        "classes": screening.classes,
        "top3": [{"combination": name, "distance": d} for name, d in zip(screening.top3, screening.top3_distances)],
        "coordinates": {"x": screening.x, "y": screening.y},
        "explanation": screening.explanation,
        "similar_cases": [{"case_id": c.case_id, "combination": c.combination, "distance": c.distance}
                          for c in screening.similar_cases],
        "similar_note": screening.similar_note,
        "needs_review": screening.needs_review,
        "ood_score": screening.ood_score,
        "intended_use": INTENDED_USE,
    }


def screening_from_answer(answer: dict[str, Any], scan_id: str) -> Screening:
    """The Screening a 200 answer was encoded from (`api_answer` read back), named `scan_id`: a client
    of the API (the listener's `--serve-url`) then encodes it as the in-process path would."""
    return Screening(
        scan_id=scan_id, model_version=answer["model_version"], x=answer["coordinates"]["x"], y=answer["coordinates"]["y"],
        top3=[t["combination"] for t in answer["top3"]], top3_distances=[t["distance"] for t in answer["top3"]],
        combination=answer["decision"], **answer["classes"], explanation=answer["explanation"],
        similar_cases=[SimilarCase(c["case_id"], c["combination"], c["distance"]) for c in answer["similar_cases"]],
        similar_note=answer.get("similar_note"), ood_score=answer.get("ood_score"), needs_review=answer.get("needs_review"),
    )
