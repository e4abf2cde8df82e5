"""What the HTTP API takes and answers, as the OpenAPI document (/openapi.json, /docs) states it.

The routes build their answers from these models and declare these responses, so the document is
generated from the code that answers; tests/test_api_contract.py runs schemathesis against it.
"""

from typing import Any, Literal

from fastapi import Security
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

TOKEN_ENV = "CLARE_API_TOKEN"
SCAN_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "application/dicom", "application/octet-stream"})
MAX_FORM_FIELDS = 8  # text fields a multipart body may carry beside its one file (ignored)
RAW_SCAN_TYPES = sorted(SCAN_TYPES)


class ParameterProblem(BaseModel):
    """One invalid request parameter."""

    where: list[str | int] = Field(description="the parameter, e.g. ['query', 'k']")
    problem: str


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str = Field(description="the reason for programs: unauthorized, bad_multipart, payload_too_large, unsupported_media_type, "
                       "invalid_parameters, unknown_case, not_found, method_not_allowed, overloaded, stopping, or the kind of scan error "
                       "(empty, truncated, not_an_image, too_many_pixels, bad_dimensions, unsupported, ...)")
    detail: str | list[ParameterProblem] = Field(description="the reason for people; for invalid_parameters, each parameter's problem")
    request_id: str = Field(description="the request's id, also in the x-request-id header")
    model_version: str | None = Field(description="the model bundle's content hash (null only before the bundle is loaded)")


class ClassFlags(BaseModel):
    """The decision as the five CLARE-XR classes, 1 where present."""

    Ca: int = Field(ge=0, le=1, description="cardiac (cardiomegaly)")
    Pa: int = Field(ge=0, le=1, description="parenchymal (infiltration, fibrosis, atelectasis, mass, nodule, pneumonia, consolidation, edema)")
    Pn: int = Field(ge=0, le=1, description="pneumothorax")
    Pl: int = Field(ge=0, le=1, description="pleural (effusion, pleural thickening)")
    Ot: int = Field(ge=0, le=1, description="other (hernia, emphysema)")


class NearReference(BaseModel):
    """A reference combination near the scan's point."""

    combination: str
    distance: float = Field(ge=0)


class Coordinates(BaseModel):
    """The scan's point in the reference space."""

    x: float
    y: float


class SimilarCase(BaseModel):
    """An indexed known case whose ground truth is the decision."""

    case_id: str = Field(description="its id: GET /v1/cases/{case_id}/image is its thumbnail")
    combination: str
    distance: float = Field(ge=0, description="from the scan's point")


class ScreeningAnswer(BaseModel):
    """One scan screened: the decision (R4), why, and similar known cases."""

    request_id: str
    model_version: str
    decision: str = Field(description="the combination decided, e.g. 'CaPl' or 'No Finding'")
    classes: ClassFlags
    top3: list[NearReference] = Field(description="the three reference combinations nearest to the scan's point, nearest first")
    coordinates: Coordinates
    explanation: str = Field(description="the decision in a sentence")
    similar_cases: list[SimilarCase] = Field(description="the k known cases of the decision nearest to the scan's point, nearest first")
    similar_note: str | None = Field(description="why there are fewer than k similar cases, if there are")
    needs_review: bool | None = Field(description="true: the scan lies outside what the model knows (its OOD score is above 1), "
                                      "so a person must judge it and the decision above is not to be relied on; null: the "
                                      "model bundle has no OOD score (exported before it), so this was not checked")
    ood_score: float | None = Field(ge=0, description="how unlike the training archive the scan is: the Mahalanobis distance of "
                                    "the regressor's features, in units of the threshold fitted on validation scans (1)")
    intended_use: str


class Alive(BaseModel):
    status: Literal["alive"]


class Queue(BaseModel):
    """The ingress replica's admission (serve/admission.py): what it works on, what waits, what it refused."""

    slots: int = Field(description="requests this replica works on at once")
    working: int
    waiting: int = Field(description="requests admitted, waiting for a slot")
    budget_s: float = Field(description="the queue-wait budget: a request that cannot start within it is answered 503")
    expected_wait_s: float = Field(description="how long a request arriving now would wait for a slot")
    service_rate_per_s: float | None = Field(description="requests started per second while every slot is busy (null before the first answer)")
    shed: dict[str, int] = Field(description="requests answered 503 since the replica started, by reason: at_arrival "
                                 "(expected wait over the budget), waited_past_budget")


class Readiness(BaseModel):
    """Whether every stage answers with the bundle's model version, and whether it is shedding load."""

    ready: bool
    state: Literal["ready", "overloaded", "down", "stopping"] = Field(description="ready; overloaded: working at capacity and answering "
                                                          "503 with Retry-After to what cannot start within the budget (shed in "
                                                          "the last 10 s, or a request now would wait longer); down: not ready; "
                                                          "stopping: finishing the requests it holds, refusing new ones")
    model_version: str
    stages: dict[str, str | None] = Field(description="the model version each stage answers with (null: it did not answer)")
    queue: Queue


bearer = HTTPBearer(scheme_name="bearerAuth", auto_error=False, description=(
    f"The server's API token as `Authorization: Bearer <token>`, required on /v1/* where the server has one ({TOKEN_ENV} "
    "in its environment); a server without one leaves the routes open and says so in this document."))

# What POST /v1/predict answers, by the request's Accept header (serve/negotiation.py); the first is the default.
JSON = "application/json"
DICOM = "application/dicom"
FHIR = "application/fhir+json"
SCREENING_MEDIA_TYPES: tuple[str, ...] = (JSON, DICOM, FHIR)

ERRORS = {
    400: "the multipart body cannot be parsed, or holds no file or more than one (bad_multipart)",
    401: "the bearer token is missing or wrong (unauthorized)",
    404: "no indexed case has this id, or its image cannot be read on this server (unknown_case)",
    413: "the body is over the server's limit, declared or as it streams (payload_too_large)",
    415: "the body, or its uploaded file, is not PNG, JPEG, DICOM or octet-stream (unsupported_media_type)",
    406: f"the Accept header allows none of {', '.join(SCREENING_MEDIA_TYPES)} (not_acceptable)",
    422: "an invalid parameter (invalid_parameters), or a scan that cannot be screened, with the reason: "
         "empty, truncated, not an image, too many pixels, ...; or, for a DICOM SR, a scan that is not DICOM (not_dicom), "
         "or a source whose header lacks what the result must carry (cannot_encode)",
    503: "the scan cannot start within the server's queue-wait budget, or a stage's queue is full: retry after "
         "Retry-After seconds, which the server computes from its current service rate (overloaded); or the server "
         "is stopping and takes no new requests (stopping)",
}
HEADER = {"schema": {"type": "string"}, "required": True}
ANSWER_HEADERS = {"x-request-id": HEADER | {"description": "the request's id"},
                   "x-model-version": HEADER | {"description": "the model bundle's content hash"}}
TIMED_HEADERS = ANSWER_HEADERS | {"server-timing": HEADER | {"description": "seconds of each stage (admission: waiting for a slot; queue, decode, regress, lookup, chain)"}}
ERROR_HEADERS = {401: {"WWW-Authenticate": HEADER | {"description": "Bearer"}},
                  503: {"Retry-After": HEADER | {"description": "seconds"}}}


def answers(success: dict[str, Any], *errors: int) -> dict[int | str, dict[str, Any]]:
    """The responses of a route: its success and the errors it can answer, each with its headers."""
    failures = {status: {"model": ErrorBody, "description": ERRORS[status],
                         "headers": ANSWER_HEADERS | ERROR_HEADERS.get(status, {})} for status in errors}
    return {200: {"headers": ANSWER_HEADERS} | success} | failures


BINARY = {"type": "string", "format": "binary"}
PNG = {"content": {"image/png": {"schema": BINARY}}}
# The screening's other encodings, beside the JSON of the response model.
SCREENING_ENCODINGS = {"content": {
    DICOM: {"schema": BINARY | {"description": "a DICOM Comprehensive 3D SR (TID 1500) in the scan's study, for a DICOM scan"}},
    FHIR: {"schema": {"type": "object", "description": "a FHIR R4 Bundle: DiagnosticReport, an Observation per class, the Device"}},
}}
# The scan routes read the body themselves, as it streams, to refuse it (413) as soon as it passes
# the limit; so its description is given here rather than taken from a parameter.
SCAN_REQUEST = {"requestBody": {
    "required": True,
    "description": f"one scan: its bytes as the body, with their content type, or one file in a multipart/form-data body "
                   f"(any field name; up to {MAX_FORM_FIELDS} text fields beside it are ignored)",
    "content": {media: {"schema": BINARY} for media in RAW_SCAN_TYPES} | {"multipart/form-data": {
        "schema": {"type": "object", "properties": {"file": BINARY | {"description": "the scan"}}, "required": ["file"],
                   "additionalProperties": {"type": "string"}, "maxProperties": 1 + MAX_FORM_FIELDS},
        "encoding": {"file": {"contentType": ", ".join(RAW_SCAN_TYPES)}}}},
}}
# A screening's similar cases lead to their thumbnails (clients, and schemathesis's stateful phase, follow it).
CASE_LINKS = {"links": {"nearest_similar_case_image": {
    "operationId": "case_image", "parameters": {"case_id": "$response.body#/similar_cases/0/case_id"},
    "description": "the thumbnail of the nearest similar case"}}}
AUTHENTICATED = [Security(bearer)]
SCAN_ERRORS = (400, 401, 413, 415, 422, 503)
