"""Which encoding of a screening a client asked for, from its Accept header (RFC 9110 §12.5.1).

One route answers three readers: a program that wants JSON, a PACS gateway that stores the DICOM
SR, an EHR interface that takes the FHIR Bundle. The client says which in Accept; a client that
accepts none of them gets 406 with the list, never an answer it cannot read.
"""

from __future__ import annotations

from serve.contract import DICOM, FHIR, JSON, SCREENING_MEDIA_TYPES as MEDIA_TYPES
from serve.requests import APIError

__all__ = ["DICOM", "FHIR", "JSON", "MEDIA_TYPES", "negotiate"]


def negotiate(accept: str | None) -> str:
    """The media type to answer with: the acceptable one with the highest q, the client's order breaking ties."""
    if accept is None or not accept.strip():
        return JSON
    best, best_q = None, 0.0
    for media_range in accept.split(","):
        kind, *params = (part.strip().lower() for part in media_range.split(";"))
        q = _quality(params)
        for candidate in _matches(kind):
            if q > best_q:
                best, best_q = candidate, q
    if best is None:
        raise APIError(406, "not_acceptable", f"this route answers {', '.join(MEDIA_TYPES)}; the request's Accept "
                                              f"header allows none of them")
    return best


def _matches(kind: str) -> tuple[str, ...]:
    if kind in ("*/*", "application/*"):
        return (JSON,)
    return (kind,) if kind in MEDIA_TYPES else ()


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0
