"""The HTTP API: a FastAPI ingress that checks each request and walks it through the stages.

The ingress does what must happen before any work is spent on a request — authentication,
the body size limit, the content type — and turns every outcome into a JSON answer that
carries the request id and the model version.

Where the stages run is the application's topology (serve/app.py): in the ingress replicas
themselves (the rules and the lookup inline; with topology 'single' a scan worker per CPU decodes
and regresses the scans that queue together, so a request crosses no hop; with topology 'ingress'
a pool of threads sized to the replica's CPUs decodes and the regressor is a deployment, one
hop); or all as deployments of their own (chained, so the ingress awaits once at the chain's end).
"""


import asyncio
import hmac
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any, AsyncIterator, Literal

from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
import ray
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.util import metrics
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser

from clare_dist.bundle import load_bundle
from clare_dist.scan_workers import ScanWorkers
from clare_dist.scans import ScanConfig, ScanError
from clare_dist.encode.api_json import api_answer
from clare_dist.result import INTENDED_USE, Screening
from clare_dist.screening import DEFAULT_K
from serve.stages import CaseLookup, DecodedScan, Preprocessor, Regressed, RegressorSettings

log = logging.getLogger("ray.serve")

API_VERSION = "v1"
TOKEN_ENV = "CLARE_API_TOKEN"
READY_TIMEOUT_S = 5.0
MAX_K = 100
SCAN_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "application/dicom", "application/octet-stream"})
STAGE_BUCKETS_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]

MAX_FORM_FIELDS = 8  # text fields a multipart body may carry beside its one file (ignored)
RAW_SCAN_TYPES = sorted(SCAN_TYPES)


class ClareApp(FastAPI):
    """FastAPI with the document of this server: where it has no API token, the bearer token is optional."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            document = super().openapi()
            if not getattr(self.state, "token_required", False):
                for operation in (op for path in document["paths"].values() for op in path.values()):
                    if "security" in operation:
                        operation["security"].append({})
        return self.openapi_schema


api = ClareApp(
    title="clare-dist screening API",
    version=API_VERSION,
    description=f"Explainable chest X-ray screening (CLARE-XR). {INTENDED_USE}",
)


# The OpenAPI document (/openapi.json, /docs) is generated from the models, responses and request
# body below, which are the answers the routes build: a test runs schemathesis against it.

class ParameterProblem(BaseModel):
    """One invalid request parameter."""

    where: list[str | int] = Field(description="the parameter, e.g. ['query', 'k']")
    problem: str


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str = Field(description="the reason for programs: unauthorized, bad_multipart, payload_too_large, unsupported_media_type, "
                       "invalid_parameters, unknown_case, not_found, method_not_allowed, overloaded, or the kind of scan error "
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
    intended_use: str


class Alive(BaseModel):
    status: Literal["alive"]


class Readiness(BaseModel):
    """Whether every stage answers with the bundle's model version."""

    ready: bool
    model_version: str
    stages: dict[str, str | None] = Field(description="the model version each stage answers with (null: it did not answer)")


bearer = HTTPBearer(scheme_name="bearerAuth", auto_error=False, description=(
    f"The server's API token as `Authorization: Bearer <token>`, required on /v1/* where the server has one ({TOKEN_ENV} "
    "in its environment); a server without one leaves the routes open and says so in this document."))

_ERRORS = {
    400: "the multipart body cannot be parsed, or holds no file or more than one (bad_multipart)",
    401: "the bearer token is missing or wrong (unauthorized)",
    404: "no indexed case has this id, or its image cannot be read on this server (unknown_case)",
    413: "the body is over the server's limit, declared or as it streams (payload_too_large)",
    415: "the body, or its uploaded file, is not PNG, JPEG, DICOM or octet-stream (unsupported_media_type)",
    422: "an invalid parameter (invalid_parameters), or a scan that cannot be screened, with the reason: "
         "empty, truncated, not an image, too many pixels, ...",
    503: "a stage's queue is full: retry after Retry-After seconds (overloaded)",
}
_HEADER = {"schema": {"type": "string"}, "required": True}
_ANSWER_HEADERS = {"x-request-id": _HEADER | {"description": "the request's id"},
                   "x-model-version": _HEADER | {"description": "the model bundle's content hash"}}
_TIMED_HEADERS = _ANSWER_HEADERS | {"server-timing": _HEADER | {"description": "seconds of each stage (queue, decode, regress, lookup, chain)"}}
_ERROR_HEADERS = {401: {"WWW-Authenticate": _HEADER | {"description": "Bearer"}},
                  503: {"Retry-After": _HEADER | {"description": "seconds"}}}


def _answers(success: dict[str, Any], *errors: int) -> dict[int | str, dict[str, Any]]:
    """The responses of a route: its success and the errors it can answer, each with its headers."""
    failures = {status: {"model": ErrorBody, "description": _ERRORS[status],
                         "headers": _ANSWER_HEADERS | _ERROR_HEADERS.get(status, {})} for status in errors}
    return {200: {"headers": _ANSWER_HEADERS} | success} | failures


_BINARY = {"type": "string", "format": "binary"}
_PNG = {"content": {"image/png": {"schema": _BINARY}}}
# The scan routes read the body themselves, as it streams, to refuse it (413) as soon as it passes
# the limit; so its description is given here rather than taken from a parameter.
_SCAN_REQUEST = {"requestBody": {
    "required": True,
    "description": f"one scan: its bytes as the body, with their content type, or one file in a multipart/form-data body "
                   f"(any field name; up to {MAX_FORM_FIELDS} text fields beside it are ignored)",
    "content": {media: {"schema": _BINARY} for media in RAW_SCAN_TYPES} | {"multipart/form-data": {
        "schema": {"type": "object", "properties": {"file": _BINARY | {"description": "the scan"}}, "required": ["file"],
                   "additionalProperties": {"type": "string"}, "maxProperties": 1 + MAX_FORM_FIELDS},
        "encoding": {"file": {"contentType": ", ".join(RAW_SCAN_TYPES)}}}},
}}
# A screening's similar cases lead to their thumbnails (clients, and schemathesis's stateful phase, follow it).
_CASE_LINKS = {"links": {"nearest_similar_case_image": {
    "operationId": "case_image", "parameters": {"case_id": "$response.body#/similar_cases/0/case_id"},
    "description": "the thumbnail of the nearest similar case"}}}
_AUTHENTICATED = [Security(bearer)]
_SCAN_ERRORS = (400, 401, 413, 415, 422, 503)


class APIError(Exception):
    """A request that is answered with `status` and a JSON reason instead of a screening."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def request_id(request: Request) -> str:
    """The id Serve's proxy gave the request (or the caller's own x-request-id)."""
    return request.headers.get("x-request-id", "")


def _error_body(request: Request, error: str, detail: Any) -> dict[str, Any]:
    return {"error": error, "detail": detail, "request_id": request_id(request),
            "model_version": getattr(request.app.state, "model_version", None)}


@api.exception_handler(APIError)
async def _api_error(request: Request, err: APIError) -> JSONResponse:
    return JSONResponse(_error_body(request, err.error, err.detail), status_code=err.status, headers=err.headers)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    """The router's own answers (no such route: 404, a method it does not take: 405) in the same JSON."""
    return JSONResponse(_error_body(request, HTTPStatus(err.status_code).name.lower(), err.detail),
                        status_code=err.status_code, headers=err.headers)


@api.exception_handler(RequestValidationError)
async def _invalid_parameters(request: Request, err: RequestValidationError) -> JSONResponse:
    detail = [{"where": list(e["loc"]), "problem": e["msg"]} for e in err.errors()]
    return JSONResponse(_error_body(request, "invalid_parameters", detail), status_code=422)


@api.middleware("http")
async def _count(request: Request, call_next):
    """Stamp every answer with the model version; count answers by route and status (for Prometheus,
    through Ray's metrics export)."""
    try:
        response = await call_next(request)
    except Exception:
        log.exception("request %s failed", request_id(request))
        response = JSONResponse(_error_body(request, "internal", "the server failed on this request; it is logged under its request id"),
                                status_code=500)
    version = getattr(request.app.state, "model_version", None)
    if version is not None:
        response.headers["x-model-version"] = version
    counter = getattr(request.app.state, "requests_counter", None)
    if counter is not None:
        route = request.scope.get("route")
        counter.inc(tags={"route": getattr(route, "path", "unmatched"), "status": str(response.status_code)})
    return response


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def scan_bytes(request: Request, limit: int) -> bytes:
    """The scan of a request: a raw body with an image or DICOM content type, or one multipart file."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, limit)
    if content_type == "multipart/form-data":
        return await _multipart_scan(request.headers, body)
    if content_type not in SCAN_TYPES:
        raise APIError(415, "unsupported_media_type",
                       f"send the scan as {', '.join(sorted(SCAN_TYPES))} or as a multipart/form-data file; got {content_type or 'no content type'}")
    return body


async def _multipart_scan(headers: Headers, body: bytes) -> bytes:
    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(headers, stream(), max_files=1, max_fields=MAX_FORM_FIELDS).parse()
    except Exception as err:  # starlette raises its own HTTPException / MultiPartException types
        raise APIError(400, "bad_multipart", f"the multipart body could not be parsed: {err}") from None
    files = [value for _, value in form.multi_items() if not isinstance(value, str)]
    if len(files) != 1:
        raise APIError(400, "bad_multipart", f"send exactly one file in the multipart body; got {len(files)}")
    part_type = (files[0].content_type or "application/octet-stream").split(";")[0].strip().lower()
    if part_type not in SCAN_TYPES:
        raise APIError(415, "unsupported_media_type", f"the uploaded file is {part_type}; send PNG, JPEG or DICOM")
    return await files[0].read()


def _refuse_failed(outcome: object) -> None:
    """A scan that could not be screened is answered 422 with its kind and reason."""
    if isinstance(outcome, Screening) and not outcome.ok:
        raise APIError(422, outcome.error_kind, outcome.error_reason)


def _too_large(size: int, limit: int) -> APIError:
    return APIError(413, "payload_too_large", f"the body is {size:,} bytes or more; the limit is {limit:,} bytes")


def _server_timing(timings: dict[str, float]) -> dict[str, str]:
    """Per-stage times in the standard Server-Timing header, for clients and benchmarks."""
    return {"server-timing": ", ".join(f"{stage};dur={seconds * 1000:.2f}" for stage, seconds in timings.items())}


def _replica_cpus() -> int:
    """Whole CPUs Ray gave this replica (at least one): how many scans it decodes at a time."""
    return max(1, round(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def _node_cpus() -> int:
    """CPUs of the Ray node this replica runs on: the cores a replica that regresses on the CPU
    works with. Ray's count, not os.cpu_count(): in a Pod, KubeRay sets it from the container's CPU
    limit, where os.cpu_count() says the host's."""
    here = ray.get_runtime_context().get_node_id()
    cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node["NodeID"] == here]
    return max(1, int(cpus[0])) if cpus else os.cpu_count() or 1


@serve.deployment(name="ClareAPI", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_queued_requests=256)
@serve.ingress(api)
class ClareAPI:
    """The ingress: one replica handles many requests at once. Given no preprocessor and lookup
    deployments, it decodes and looks up itself; given regressor settings instead of a regressor
    deployment, it regresses too. What it is given as deployments, it waits for."""

    def __init__(self, regressor: DeploymentHandle | RegressorSettings, bundle: str, max_body_mb: float,
                 preprocessor: DeploymentHandle | None = None, lookup: DeploymentHandle | None = None,
                 images_root: str | None = None, decode_threads: int | None = None, limits: ScanConfig = ScanConfig()) -> None:
        self.preprocessor, self.lookup = preprocessor, lookup
        loaded = load_bundle(bundle)
        self.model_version = loaded.model_version
        local = isinstance(regressor, RegressorSettings)
        self.regressor = None if local else regressor
        self.workers = None
        if local:
            cores = _node_cpus()
            self.workers = ScanWorkers(loaded.onnx_path, limits.sized(loaded.image_size), decode_threads or cores, max_batch=regressor.max_batch_size,
                                       wide_threads=regressor.threads or cores, spinning=regressor.spinning)
        self.max_body = int(max_body_mb * 1024 * 1024)
        self.token = os.environ.get(TOKEN_ENV) or None
        self.in_ingress = preprocessor is None
        if self.in_ingress:
            self.decoder = Preprocessor.func_or_class(bundle, limits)
            self.cases = CaseLookup.func_or_class(bundle, images_root)
            self.pool = ThreadPoolExecutor(max_workers=decode_threads or _replica_cpus(), thread_name_prefix="clare-cpu-stage")
        api.state.model_version = self.model_version
        api.state.token_required = self.token is not None
        api.openapi_schema = None  # the document says whether this server requires the token
        api.state.requests_counter = metrics.Counter(
            "clare_api_requests", description="Answers of the clare-dist API by route and HTTP status",
            tag_keys=("route", "status"))
        self.stage_seconds = metrics.Histogram(
            "clare_api_stage_seconds", description="Time per stage of a screening request, hop included",
            boundaries=STAGE_BUCKETS_S, tag_keys=("stage",))
        log.info("clare-dist API for model %s; CPU stages %s; bearer token %s", self.model_version,
                 "in the ingress" if self.in_ingress else "in their own deployments", "required" if self.token else "off")

    @api.get("/healthz", summary="Alive: the ingress replica answers", operation_id="healthz", response_model=Alive,
             responses=_answers({"description": "alive"}))
    async def healthz(self) -> dict[str, str]:
        return {"status": "alive"}

    @api.get("/readyz", summary="Ready: the bundle is loaded and every stage answers with the same model", operation_id="readyz",
             response_model=Readiness,
             responses=_answers({"description": "ready"}) | {503: {"model": Readiness, "description": "not ready: a stage did not answer, "
                                                                    "or answers with another model", "headers": _ANSWER_HEADERS}})
    async def readyz(self, request: Request) -> JSONResponse:
        stages = {"Regressor": self.regressor} if self.workers is None else {}
        if not self.in_ingress:
            stages |= {"Preprocessor": self.preprocessor, "CaseLookup": self.lookup}
        answers = await asyncio.gather(*(self._stage_version(h) for h in stages.values()))
        status = {name: version for name, version in zip(stages, answers)}
        if self.in_ingress:
            status |= {"Preprocessor": self.decoder.ready(), "CaseLookup": self.cases.ready()}
        if self.workers is not None:
            status["Regressor"] = self.model_version if all(t.is_alive() for t in self.workers.threads) else None
        ready = all(version == self.model_version for version in status.values())
        return JSONResponse(Readiness(ready=ready, model_version=self.model_version, stages=status).model_dump(),
                            status_code=200 if ready else 503)

    @api.post("/v1/predict", summary="Screen one scan: decision, explanation, similar known cases", operation_id="predict",
              response_model=ScreeningAnswer, dependencies=_AUTHENTICATED, openapi_extra=_SCAN_REQUEST,
              responses=_answers({"description": "the screening", "headers": _TIMED_HEADERS} | _CASE_LINKS, *_SCAN_ERRORS))
    async def predict(self, request: Request, k: int = Query(DEFAULT_K, ge=1, le=MAX_K)) -> JSONResponse:
        self._authorize(request)
        rid = request_id(request)
        body = await scan_bytes(request, self.max_body)
        start = time.perf_counter()
        if self.workers is not None:
            outcome = self.cases.screen(await self._screen_here(body), rid, k)
        elif self.in_ingress:
            decoded = await self._here(self.decoder, body, rid)
            _refuse_failed(decoded)
            outcome = self.cases.screen(await self._regress(decoded), rid, k)
        else:
            # The stages are chained: each gets the previous one's result straight from it, and the
            # ingress waits once, for the end of the chain (a bad scan travels it as a failed Screening).
            regressed = self.regressor.remote(self.preprocessor.remote(body, rid))
            outcome = await self._shed_overload(self.lookup.screen.remote(regressed, rid, k))
        screening, seconds = outcome
        _refuse_failed(screening)
        seconds["chain"] = time.perf_counter() - start
        self._observe(seconds)
        # validated as the documented ScreeningAnswer, so the document and the answer cannot drift apart
        answer = ScreeningAnswer.model_validate(api_answer(screening, rid)).model_dump(mode="json")
        return JSONResponse(answer, headers=_server_timing(seconds))

    @api.post("/v1/predict/plot", summary="The same screening as a PNG: reference space and similar cases", operation_id="predict_plot",
              response_class=Response, dependencies=_AUTHENTICATED, openapi_extra=_SCAN_REQUEST,
              responses=_answers(_PNG | {"description": "the figure (the paper's Fig. 5 and 7)", "headers": _TIMED_HEADERS}, *_SCAN_ERRORS))
    async def predict_plot(self, request: Request, k: int = Query(DEFAULT_K, ge=1, le=MAX_K)) -> Response:
        self._authorize(request)
        rid = request_id(request)
        body = await scan_bytes(request, self.max_body)
        if self.in_ingress:
            decoded = await self._here(self.decoder, body, rid, True)
        else:
            decoded = await self._shed_overload(self.preprocessor.remote(body, rid, True))
        _refuse_failed(decoded)
        regressed = await self._regress(decoded)
        self._observe(regressed.seconds)
        if self.in_ingress:
            png = await self._here(self.cases.plot, regressed.coords, rid, k, decoded.thumbnail)
        else:
            png = await self._shed_overload(self.lookup.plot.remote(regressed.coords, rid, k, decoded.thumbnail))
        return Response(png, media_type="image/png", headers=_server_timing(regressed.seconds))

    @api.get("/v1/cases/{case_id}/image", summary="Thumbnail of an indexed known case", operation_id="case_image",
             response_class=Response, dependencies=_AUTHENTICATED,
             responses=_answers(_PNG | {"description": "the case's thumbnail"}, 401, 404, 422, 503))
    async def case_image(self, request: Request, case_id: str) -> Response:
        self._authorize(request)
        if self.in_ingress:
            png, reason = await self._here(self.cases.case_image, case_id)
        else:
            png, reason = await self._shed_overload(self.lookup.case_image.remote(case_id))
        if png is None:
            raise APIError(404, "unknown_case", reason)
        return Response(png, media_type="image/png")

    async def _here(self, work: Any, *args: Any) -> Any:
        """CPU work of this replica, in its worker threads, so the event loop keeps serving."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, work, *args)

    async def _screen_here(self, body: bytes) -> Regressed:
        """The scan's point from this replica's scan workers, which decode it too; 422 for a bad scan."""
        try:
            done = await asyncio.wrap_future(self.workers.submit(body))
        except ScanError as err:
            raise APIError(422, err.kind, err.message) from None
        return Regressed(done.coords, done.seconds)

    async def _regress(self, decoded: DecodedScan) -> Regressed:
        """The point of a decoded scan, from this replica's scan workers or the Regressor deployment."""
        if self.workers is not None:
            done = await asyncio.wrap_future(self.workers.submit(decoded.scan))
            return Regressed(done.coords, decoded.seconds | {"queue": done.seconds["queue"], "regress": done.seconds["regress"]})
        return await self._shed_overload(self.regressor.remote(decoded))

    async def _shed_overload(self, response: Any) -> Any:
        """The stage's answer; 503 with Retry-After when a stage's queue is full."""
        try:
            return await response
        except BackPressureError:
            raise APIError(503, "overloaded", "the server is at capacity; retry after a short wait",
                           headers={"Retry-After": "1"}) from None

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise APIError(401, "unauthorized", "send 'Authorization: Bearer <token>' with this server's API token",
                           headers={"WWW-Authenticate": "Bearer"})

    def _observe(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds.observe(seconds, tags={"stage": stage})

    async def _stage_version(self, handle: DeploymentHandle) -> str | None:
        try:
            return await asyncio.wait_for(handle.ready.remote(), READY_TIMEOUT_S)
        except Exception as err:  # a stage that is down or still starting is reported as not ready
            log.warning("readiness: %s did not answer: %s", handle.deployment_name, type(err).__name__)
            return None

