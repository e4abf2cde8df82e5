"""A screening as one row of the batch job's Parquet output, and back.

The schema is derived from `Screening`'s fields, in the column order the part files of earlier
releases have, so a resumed run appends to them and one read covers both: `scan_id`, the input
`path`, `status`, `error` ("kind: reason", the one column the two error fields share on disk),
the screening's fields (`ood_score` and `needs_review`, the latest, last), `model_version`, and
`results_stored` last: what became of the results a PACS run stores back ("confirmed", or why not;
empty where none were to be stored). Part files written before a column existed read back with it
empty (None).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa

from clare_dist.result import STATUS_ERROR, STATUS_SKIPPED, SimilarCase, Screening

_LEAVES = {str: pa.string(), float: pa.float32(), int: pa.int8(), bool: pa.bool_()}
_OWN_COLUMNS = ("scan_id", "model_version", "status", "error_kind", "error_reason")


def _arrow_type(hint: Any) -> pa.DataType:
    """The Arrow type of a field's annotation: optional leaves, lists, and dataclasses as structs."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) is list:
        return pa.list_(_arrow_type(typing.get_args(hint)[0]))
    if dataclasses.is_dataclass(hint):
        return pa.struct([(name, _arrow_type(t)) for name, t in typing.get_type_hints(hint).items()])
    return _LEAVES[hint]


def _schema() -> pa.Schema:
    hints = typing.get_type_hints(Screening)
    body = [(name, _arrow_type(hints[name])) for name in hints if name not in _OWN_COLUMNS]
    return pa.schema([("scan_id", pa.string()), ("path", pa.string()), ("status", pa.string()), ("error", pa.string()),
                      *body, ("model_version", pa.string()), ("results_stored", pa.string())])


ROW_SCHEMA = _schema()
ROW_COLUMNS: tuple[str, ...] = tuple(ROW_SCHEMA.names)
_BODY = [name for name in ROW_COLUMNS if name not in ("scan_id", "path", "status", "error", "model_version", "results_stored")]


def to_table(screenings: Sequence[Screening], paths: Iterable[str], stored: Sequence[str | None] | None = None) -> pa.Table:
    """Rows of these screenings (with the input path of each, and what became of its stored results) under ROW_SCHEMA."""
    rows = []
    stored = [None] * len(screenings) if stored is None else stored
    for screening, path, delivered in zip(screenings, paths, stored, strict=True):
        row = {"scan_id": screening.scan_id, "path": path, "status": screening.status,
               "error": None if screening.ok else f"{screening.error_kind}: {screening.error_reason}",
               "model_version": screening.model_version, "results_stored": delivered}
        for name in _BODY:
            value = getattr(screening, name)
            row[name] = [dataclasses.asdict(c) for c in value] if name == "similar_cases" else value
        if not screening.ok:  # an error row holds no lists, as the rows of earlier releases
            row |= {"top3": None, "top3_distances": None, "similar_cases": None}
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def from_row(row: Mapping[str, Any], error_kinds: Sequence[str]) -> Screening:
    """The Screening a row was written from. `error_kinds` are the kinds an `error` cell can start
    with (scans.SCAN_ERROR_KINDS); another text is kept whole as the reason, with kind "other"."""
    common = {"scan_id": str(row["scan_id"]), "model_version": str(row["model_version"])}
    if row["status"] in (STATUS_ERROR, STATUS_SKIPPED):
        kind, sep, reason = str(row["error"]).partition(": ")
        if not (sep and kind in error_kinds):
            kind, reason = "other", str(row["error"])
        make = Screening.failed if row["status"] == STATUS_ERROR else Screening.skipped
        return make(common["scan_id"], kind, reason, common["model_version"])
    values = {name: _plain(row[name]) for name in _BODY}
    values["similar_cases"] = [SimilarCase(str(c["case_id"]), str(c["combination"]), float(c["distance"]))
                               for c in values["similar_cases"] or []]
    values["top3"] = [str(n) for n in values["top3"]]
    values["top3_distances"] = [float(d) for d in values["top3_distances"]]
    return Screening(**common, **values)


def _plain(value: Any) -> Any:
    """A cell as plain Python: numpy scalars and arrays (as pandas gives them) unwrapped, NaN/NA as None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    return value
