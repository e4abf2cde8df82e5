"""Which PACS instances a run screens, and why each other one is skipped.

The PACS query narrows by what every PACS indexes (modality, study date); body part and view
are decided per instance, first from what the query returned and again from the retrieved
header, which is authoritative. An instance outside the selection becomes a row with status
`skipped` and the reason, so the run accounts for every instance the query listed. A value the
PACS does not record (no ViewPosition, as on many CR) does not skip: the scan is screened.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Mapping

from clare_dist.errors import UsageError

_DATE_RANGE = re.compile(r"^(\d{8})?-(\d{8})?$")


@dataclass(frozen=True)
class Instance:
    """One instance as the PACS listed it: its UIDs and what decides whether it is screened."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str | None = None
    body_part: str | None = None
    view: str | None = None

    @classmethod
    def from_header(cls, header, study_uid: str = "", series_uid: str = "", sop_uid: str = "") -> Instance:
        """The instance as its own DICOM header describes it (authoritative over a query's answer);
        the UIDs given are kept."""
        def value(keyword: str) -> str | None:
            return str(header.get(keyword, "") or "") or None

        return cls(study_uid, series_uid, sop_uid, value("Modality"), value("BodyPartExamined"), value("ViewPosition"))

    @property
    def wado_path(self) -> str:
        """Where the instance is, relative to the PACS (the row's `path`: UIDs only, no patient data)."""
        return f"studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_uid}"


@dataclass(frozen=True)
class Selection:
    """The instances to screen: `study_dates` is a DICOM date range (YYYYMMDD-YYYYMMDD, either end open)."""

    modalities: tuple[str, ...] = ("DX", "CR")
    study_dates: str | None = None
    body_parts: tuple[str, ...] = ("CHEST",)
    views: tuple[str, ...] = ("PA", "AP")
    max_instances: int | None = None

    def __post_init__(self) -> None:
        if not self.modalities:
            raise UsageError("--modality needs at least one modality, e.g. DX,CR")
        if self.study_dates is not None:
            match = _DATE_RANGE.match(self.study_dates) or re.match(r"^(\d{8})$", self.study_dates)
            if not match or not any(match.groups()):
                raise UsageError(f"--study-date {self.study_dates!r} is not a date (YYYYMMDD) or a range "
                                 "(YYYYMMDD-YYYYMMDD, an end may be left open)")
            for day in filter(None, match.groups()):
                try:
                    datetime.strptime(day, "%Y%m%d")
                except ValueError:
                    raise UsageError(f"--study-date: {day} is no calendar date") from None
        if self.max_instances is not None and self.max_instances < 1:
            raise UsageError(f"--max-instances must be at least 1, got {self.max_instances}")

    @classmethod
    def from_options(cls, modality: str, study_date: str | None, body_part: str, views: str,
                     max_instances: int | None) -> Selection:
        return cls(_codes(modality), study_date, _codes(body_part), _codes(views), max_instances)

    def skip(self, instance: Instance) -> tuple[str, str] | None:
        """(kind, reason) when the instance is outside the selection, None when it is screened."""
        if instance.modality and instance.modality.upper() not in self.modalities:
            return "not_selected_modality", f"modality {instance.modality} is not one of {','.join(self.modalities)}"
        if self.body_parts and instance.body_part and instance.body_part.upper() not in self.body_parts:
            return "not_chest", f"BodyPartExamined is {instance.body_part}, not {','.join(self.body_parts)}"
        if self.views and instance.view and instance.view.upper() not in self.views:
            return "not_frontal", f"ViewPosition is {instance.view}, not {','.join(self.views)} (lateral views are not screened)"
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Selection:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _codes(text: str) -> tuple[str, ...]:
    return tuple(part.strip().upper() for part in text.split(",") if part.strip())
