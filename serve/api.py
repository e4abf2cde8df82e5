"""The HTTP API: a FastAPI ingress that checks each request and hands it to its topology's pipeline.

The ingress does what must happen before any work is spent on a request — authentication,
admission within the queue-wait budget (serve/admission.py), the body size limit, the content
type (serve/requests.py) — and turns every outcome into the documented answer (serve/contract.py)
that carries the request id and the model version. Where the stages run is the pipeline's
business (serve/pipelines.py: single, ingress or chain); every route is the same whatever the
topology.
"""

import asyncio
import logging
import os
import time
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.util import metrics
from starlette.exceptions import HTTPException

from clare_dist.bundle import load_bundle
from clare_dist.encode.api_json import api_answer
from clare_dist.encode.identity import algorithm_of
from clare_dist.result import DEFAULT_K, INTENDED_USE
from clare_dist.scans import ScanConfig, ScanError
from serve.admission import Admission, Overloaded
from serve.contract import (
    ANSWER_HEADERS,
    AUTHENTICATED,
    CASE_LINKS,
    PNG,
    SCAN_ERRORS,
    SCAN_REQUEST,
    SCAN_TYPES,
    SCREENING_ENCODINGS,
    TIMED_HEADERS,
    TOKEN_ENV,
    Alive,
    Queue,
    Readiness,
    ScreeningAnswer,
    answers,
)
from serve.negotiation import JSON, negotiate
from serve.pipelines import pipeline_for
from serve.requests import APIError, authorize, error_body, request_id, scan_bytes, server_timing
from serve.stages import RegressorSettings
from serve.stopping import DRAIN_S, Draining

__all__ = ["SCAN_TYPES", "TOKEN_ENV", "ClareAPI", "api"]

log = logging.getLogger("ray.serve")

API_VERSION = "v1"
MAX_K = 100
STAGE_BUCKETS_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


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


@api.exception_handler(APIError)
async def _api_error(request: Request, err: APIError) -> JSONResponse:
    return JSONResponse(error_body(request, err.error, err.detail), status_code=err.status, headers=err.headers)


@api.exception_handler(ScanError)
async def _scan_error(request: Request, err: ScanError) -> JSONResponse:
    """A scan that cannot be screened: 422 with its kind and the reason."""
    return JSONResponse(error_body(request, err.kind, err.message), status_code=422)


@api.exception_handler(Overloaded)
async def _shed(request: Request, err: Overloaded) -> JSONResponse:
    """A request that cannot start within the queue-wait budget: 503 at once, with when to retry."""
    counter = getattr(request.app.state, "shed_counter", None)
    if counter is not None:
        counter.inc(tags={"reason": err.reason})
    return JSONResponse(error_body(request, "overloaded", str(err)), status_code=503,
                        headers={"Retry-After": str(err.retry_after_s)})


@api.exception_handler(BackPressureError)
async def _overloaded(request: Request, err: BackPressureError) -> JSONResponse:
    """A stage behind the ingress has a full queue: 503, to be retried when this replica's queue
    has started (its admission's estimate)."""
    admission = getattr(request.app.state, "admission", None)
    retry = admission.retry_after_s() if admission is not None else 1
    return JSONResponse(error_body(request, "overloaded", f"a stage of the server is at capacity; retry in {retry} s"),
                        status_code=503, headers={"Retry-After": str(retry)})


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    """The router's own answers (no such route: 404, a method it does not take: 405) in the same JSON."""
    return JSONResponse(error_body(request, HTTPStatus(err.status_code).name.lower(), err.detail),
                        status_code=err.status_code, headers=err.headers)


@api.exception_handler(RequestValidationError)
async def _invalid_parameters(request: Request, err: RequestValidationError) -> JSONResponse:
    detail = [{"where": list(e["loc"]), "problem": e["msg"]} for e in err.errors()]
    return JSONResponse(error_body(request, "invalid_parameters", detail), status_code=422)


@api.middleware("http")
async def _count(request: Request, call_next):
    """Refuse /v1 requests once the replica is stopping; stamp every answer with the model version;
    count answers by route and status (for Prometheus, through Ray's metrics export)."""
    draining: Draining | None = getattr(request.app.state, "draining", None)
    if draining is not None and draining.stopping and request.url.path.startswith(f"/{API_VERSION}/"):
        response = JSONResponse(error_body(request, "stopping", "the server is stopping and takes no new requests; retry "
                                           "on another server, or here once it has been started again"),
                                status_code=503, headers={"Retry-After": str(draining.retry_after_s)})
    else:
        if draining is not None:
            draining.started()
        try:
            response = await call_next(request)
        except Exception:
            log.exception("request %s failed", request_id(request))
            response = JSONResponse(error_body(request, "internal", "the server failed on this request; it is logged under its request id"),
                                    status_code=500)
        finally:
            if draining is not None:
                draining.finished()
    version = getattr(request.app.state, "model_version", None)
    if version is not None:
        response.headers["x-model-version"] = version
    counter = getattr(request.app.state, "requests_counter", None)
    if counter is not None:
        route = request.scope.get("route")
        counter.inc(tags={"route": getattr(route, "path", "unmatched"), "status": str(response.status_code)})
    return response


# The queue-wait budget: a request that cannot start its work within it is answered 503 at once.
# 2 s absorbs a burst of two seconds' work (a modality sending a study's images together) without
# refusing any, and keeps every answer within budget + one scan's work (about 2.1 s on the 2-core
# machine), inside the few seconds a PACS router or a viewer waits before it gives up; a client
# told 503 with Retry-After can go elsewhere or come back instead of timing out.
MAX_QUEUE_WAIT_S = 2.0


# max_ongoing_requests is high so that requests queue here, where the admission bounds their
# wait, rather than in Serve's router, where nothing does (serve/config.yaml says the same).
@serve.deployment(name="ClareAPI", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256, max_queued_requests=256)
@serve.ingress(api)
class ClareAPI:
    """The ingress: one replica handles many requests at once, each through the pipeline of the
    topology it was built with (regressor settings: single; a Regressor deployment: ingress; a
    Preprocessor deployment too: chain), working on as many at a time as the pipeline has slots
    and admitting the rest within the queue-wait budget."""

    def __init__(self, regressor: DeploymentHandle | RegressorSettings, bundle: str, max_body_mb: float,
                 preprocessor: DeploymentHandle | None = None, lookup: DeploymentHandle | None = None,
                 images_root: str | None = None, decode_threads: int | None = None, limits: ScanConfig = ScanConfig(),
                 max_queue_wait_s: float = MAX_QUEUE_WAIT_S, stop_notice: str | None = None, drain_s: float = DRAIN_S) -> None:
        loaded = load_bundle(bundle)
        self.model_version, self.algorithm, self.limits = loaded.model_version, algorithm_of(loaded), limits
        self.pipeline = pipeline_for(regressor, bundle, preprocessor, lookup, images_root, decode_threads, limits)
        self.admission = Admission(self.pipeline.slots, max_queue_wait_s)
        api.state.admission = self.admission
        self.draining = api.state.draining = Draining(stop_notice, drain_s)
        self.max_body = int(max_body_mb * 1024 * 1024)
        self.token = os.environ.get(TOKEN_ENV) or None
        api.state.model_version = self.model_version
        api.state.token_required = self.token is not None
        api.openapi_schema = None  # the document says whether this server requires the token
        api.state.requests_counter = metrics.Counter(
            "clare_api_requests", description="Answers of the clare-dist API by route and HTTP status",
            tag_keys=("route", "status"))
        api.state.shed_counter = metrics.Counter(
            "clare_api_shed_requests", description="Scans answered 503 because they could not start within the queue-wait "
            "budget, by reason (at_arrival: expected wait over the budget; waited_past_budget)", tag_keys=("reason",))
        self.stage_seconds = metrics.Histogram(
            "clare_api_stage_seconds", description="Time per stage of a screening request, hop included",
            boundaries=STAGE_BUCKETS_S, tag_keys=("stage",))
        log.info("clare-dist API for model %s through %s (%d at once, queue-wait budget %g s); bearer token %s",
                 self.model_version, type(self.pipeline).__name__, self.pipeline.slots, max_queue_wait_s,
                 "required" if self.token else "off")

    @api.get("/healthz", summary="Alive: the ingress replica answers (also while it sheds load)", operation_id="healthz",
             response_model=Alive, responses=answers({"description": "alive"}))
    async def healthz(self) -> dict[str, str]:
        return {"status": "alive"}

    @api.get("/readyz", summary="Ready: the bundle is loaded and every stage answers with the same model; "
             "state says whether it is shedding load (overloaded) or not working (down)", operation_id="readyz",
             response_model=Readiness,
             responses=answers({"description": "ready, or overloaded: working at capacity and answering 503 to what "
                                               "cannot start within the queue-wait budget"})
             | {503: {"model": Readiness, "description": "down: a stage did not answer, or answers with another model; "
                                                         "stopping: the server takes no new requests",
                      "headers": ANSWER_HEADERS}})
    async def readyz(self, request: Request) -> JSONResponse:
        stages = await self.pipeline.stage_versions()
        ready = all(version == self.model_version for version in stages.values())
        queue = self.admission.state()
        ready = ready and not self.draining.stopping
        state = "stopping" if self.draining.stopping else "down" if not ready else "overloaded" if queue.overloaded else "ready"
        body = Readiness(ready=ready, state=state, model_version=self.model_version, stages=stages,
                         queue=Queue(slots=queue.slots, working=queue.busy, waiting=queue.queued, budget_s=queue.budget_s,
                                     expected_wait_s=queue.expected_wait_s, service_rate_per_s=queue.service_rate_per_s,
                                     shed=queue.shed))
        # Overloaded is ready: taking a shedding replica out of rotation would only overload the others.
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @api.post("/v1/predict", summary="Screen one scan: decision, explanation, similar known cases", operation_id="predict",
              description="Answers JSON, or with `Accept: application/dicom` the DICOM SR (TID 1500) of a DICOM scan in "
                          "its study, or with `Accept: application/fhir+json` the FHIR R4 Bundle.",
              response_model=ScreeningAnswer, dependencies=AUTHENTICATED, openapi_extra=SCAN_REQUEST,
              responses=answers({"description": "the screening", "headers": TIMED_HEADERS} | CASE_LINKS | SCREENING_ENCODINGS,
                                *SCAN_ERRORS, 406))
    async def predict(self, request: Request, k: int = Query(DEFAULT_K, ge=1, le=MAX_K)) -> Response:
        authorize(request, self.token)
        media = negotiate(request.headers.get("accept"))  # before any work: a 406 costs nothing
        arrival = self.admission.check()  # a 503 costs nothing either: the body is not read
        rid = request_id(request)
        body = await scan_bytes(request, self.max_body)
        async with self.admission.slot(arrival) as waited:
            start = time.perf_counter()
            screening, seconds = await self.pipeline.screen(body, rid, k)
            seconds["chain"] = time.perf_counter() - start
            seconds["admission"] = waited
            self._observe(seconds)
            if media != JSON:
                from serve.encodings import encoded_answer  # highdicom and the FHIR models load on the first such request

                content = await asyncio.to_thread(encoded_answer, screening, body, media, self.algorithm, self.limits)
                return Response(content, media_type=media, headers=server_timing(seconds))
        # validated as the documented ScreeningAnswer, so the document and the answer cannot drift apart
        answer = ScreeningAnswer.model_validate(api_answer(screening, rid)).model_dump(mode="json")
        return JSONResponse(answer, headers=server_timing(seconds))

    @api.post("/v1/predict/plot", summary="The same screening as a PNG: reference space and similar cases", operation_id="predict_plot",
              response_class=Response, dependencies=AUTHENTICATED, openapi_extra=SCAN_REQUEST,
              responses=answers(PNG | {"description": "the figure (the paper's Fig. 5 and 7)", "headers": TIMED_HEADERS}, *SCAN_ERRORS))
    async def predict_plot(self, request: Request, k: int = Query(DEFAULT_K, ge=1, le=MAX_K)) -> Response:
        authorize(request, self.token)
        arrival = self.admission.check()
        body = await scan_bytes(request, self.max_body)
        async with self.admission.slot(arrival) as waited:
            png, seconds = await self.pipeline.plot(body, request_id(request), k)
        seconds["admission"] = waited
        self._observe(seconds)
        return Response(png, media_type="image/png", headers=server_timing(seconds))

    @api.get("/v1/cases/{case_id}/image", summary="Thumbnail of an indexed known case", operation_id="case_image",
             response_class=Response, dependencies=AUTHENTICATED,
             responses=answers(PNG | {"description": "the case's thumbnail"}, 401, 404, 422, 503))
    async def case_image(self, request: Request, case_id: str) -> Response:
        authorize(request, self.token)
        png, reason = await self.pipeline.case_image(case_id)
        if png is None:
            raise APIError(404, "unknown_case", reason)
        return Response(png, media_type="image/png")

    def _observe(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds.observe(seconds, tags={"stage": stage})
