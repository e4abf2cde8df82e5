"""What can go wrong with a PACS, as kinds a result row records and messages IT can act on."""

from __future__ import annotations

from clare_dist.errors import ClareError

PACS_ERROR_KINDS: tuple[str, ...] = (
    "pacs_unreachable",  # no connection (refused, no route, DNS, timeout) after the retries
    "pacs_auth",  # the PACS refused the credentials (HTTP 401/403, an association rejected)
    "pacs_refused",  # the PACS answered a request with a client error (4xx, a DIMSE failure status)
    "pacs_failed",  # the PACS kept failing (5xx) after the retries
    "pacs_bad_answer",  # an answer that is not what the protocol promises (no DICOM part, a malformed UID)
    "pacs_not_found",  # the instance listed by the query is no longer in the PACS
)
SKIP_KINDS: tuple[str, ...] = (
    "not_selected_modality",  # the instance's modality is not one of --modality
    "not_chest",  # BodyPartExamined says another body part than --body-part
    "not_frontal",  # ViewPosition says a view outside --views (a lateral, say)
)


class PacsError(ClareError, RuntimeError):
    """A PACS that could not be queried, read or written; `kind` is one of PACS_ERROR_KINDS."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in PACS_ERROR_KINDS:
            raise ValueError(f"unknown PacsError kind {kind!r}; expected one of {PACS_ERROR_KINDS}")
        super().__init__(message)
        self.kind = kind
        self.message = message
