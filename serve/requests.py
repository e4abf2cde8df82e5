"""HTTP plumbing of the API: the request's id, its error answers, its body and its token.

Everything here happens before any work is spent on a request, so a refused request costs
little: the body is read as it streams and refused (413) as soon as it passes the limit, the
content type is checked, the bearer token compared in constant time.
"""

import hmac
from typing import Any, AsyncIterator

from fastapi import Request
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartParser

from clare_dist.errors import ClareError
from serve.contract import MAX_FORM_FIELDS, SCAN_TYPES


class APIError(ClareError):
    """A request that is answered with `status` and a JSON reason instead of a screening."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def request_id(request: Request) -> str:
    """The id Serve's proxy gave the request (or the caller's own x-request-id)."""
    return request.headers.get("x-request-id", "")


def error_body(request: Request, error: str, detail: Any) -> dict[str, Any]:
    """The documented ErrorBody of every error answer."""
    return {"error": error, "detail": detail, "request_id": request_id(request),
            "model_version": getattr(request.app.state, "model_version", None)}


def authorize(request: Request, token: str | None) -> None:
    """Refuse (401) a request without this server's bearer token, where it has one."""
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise APIError(401, "unauthorized", "send 'Authorization: Bearer <token>' with this server's API token",
                       headers={"WWW-Authenticate": "Bearer"})


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


def server_timing(timings: dict[str, float]) -> dict[str, str]:
    """Per-stage times in the standard Server-Timing header, for clients and benchmarks."""
    return {"server-timing": ", ".join(f"{stage};dur={seconds * 1000:.2f}" for stage, seconds in timings.items())}


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


def _too_large(size: int, limit: int) -> APIError:
    return APIError(413, "payload_too_large", f"the body is {size:,} bytes or more; the limit is {limit:,} bytes")
