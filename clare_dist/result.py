"""The result of screening one scan: the one type every output is encoded from.

A scan screened by `clare-dist predict`, by the batch job or by the API becomes a `Screening`;
the API's JSON, the batch job's Parquet row, the terminal summary and the report entry are
encodings of it (`clare_dist.encode`), so one scan gives the same answer everywhere and a new
output (DICOM SR, FHIR) is one more encoder. A scan that could not be screened is a Screening
too, with status "error", the ScanError kind and its reason, and nothing else; so is one that was
deliberately not screened (status "skipped": a lateral view a PACS query listed, say).

Every screened scan also says whether it `needs_review`: its out-of-distribution score
(`clare_dist.ood`) lies above the threshold, so the model should not judge it alone. A bundle
exported before that score existed screens with both left None: not checked, which is not "fine".

Results carry a scan id (the file name, an archive path or an id the caller gives), never
patient data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from clare_dist.labels import CLASSES

INTENDED_USE = "screening aid for research; not a certified medical device"
DEFAULT_K = 9  # similar known cases a screening carries unless asked for another number
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_SKIPPED = "skipped"  # outside what is screened (a lateral view, another body part): kind and reason say which


@dataclass(frozen=True)
class SimilarCase:
    """A known case whose ground truth is the decision, `distance` from the scan's point."""

    case_id: str
    combination: str
    distance: float


@dataclass(frozen=True)
class Screening:
    """Everything said about one scan: its point, the R4 decision and its classes, the top 3
    references with distances, why (the sentence), similar known cases, whether it lies outside what
    the model knows (`ood_score` above 1: `needs_review`), and the model that said it — or, with
    status "error", why the scan could not be screened."""

    scan_id: str
    model_version: str
    status: str = STATUS_OK
    error_kind: str | None = None
    error_reason: str | None = None
    x: float | None = None
    y: float | None = None
    top3: list[str] = field(default_factory=list)
    top3_distances: list[float] = field(default_factory=list)
    combination: str | None = None
    Ca: int | None = None
    Pa: int | None = None
    Pn: int | None = None
    Pl: int | None = None
    Ot: int | None = None
    explanation: str | None = None
    similar_cases: list[SimilarCase] = field(default_factory=list)
    similar_note: str | None = None
    ood_score: float | None = None
    needs_review: bool | None = None

    @classmethod
    def failed(cls, scan_id: str, kind: str, reason: str, model_version: str) -> Screening:
        """A scan that could not be screened: `kind` is a ScanError kind, `reason` its message."""
        return cls(scan_id=scan_id, model_version=model_version, status=STATUS_ERROR, error_kind=kind, error_reason=reason)

    @classmethod
    def skipped(cls, scan_id: str, kind: str, reason: str, model_version: str) -> Screening:
        """A scan outside what is screened: `kind` is a pacs.errors.SKIP_KINDS kind, `reason` says what it is."""
        return cls(scan_id=scan_id, model_version=model_version, status=STATUS_SKIPPED, error_kind=kind, error_reason=reason)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def ood_checked(self) -> bool:
        """Whether the model said if the scan lies within what it knows (bundles before the OOD
        score cannot)."""
        return self.needs_review is not None

    @property
    def classes(self) -> dict[str, int | None]:
        return {code: getattr(self, code) for code in CLASSES}

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only (`json.dumps` takes it as it is); `from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Screening:
        cases = [SimilarCase(str(c["case_id"]), str(c["combination"]), float(c["distance"]))
                 for c in data.get("similar_cases") or []]
        return cls(**{**data, "similar_cases": cases})
