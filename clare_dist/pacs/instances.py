"""The instance list of a PACS run, saved in its output folder before anything is retrieved.

The query runs once: a rerun of a killed job reads the same list and retrieves only the
instances without a row yet, so the result is the same set of rows whatever the PACS received
meanwhile. A rerun with another PACS or another selection into the same folder is refused:
its rows would mix two questions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from clare_dist.atomic import atomic_path, write_json_atomic
from clare_dist.errors import UsageError
from clare_dist.pacs.selection import Instance, Selection

log = logging.getLogger(__name__)

LIST_DIR = "pacs"
_FIELDS = [f.name for f in fields(Instance)]


def list_paths(out_dir: Path) -> tuple[Path, Path]:
    return out_dir / LIST_DIR / "query.json", out_dir / LIST_DIR / "instances.parquet"


def saved_instances(out_dir: Path, source: dict[str, Any], selection: Selection) -> list[Instance] | None:
    """The list a previous run of this query saved in `out_dir`, or None when there is none yet."""
    query_file, list_file = list_paths(out_dir)
    if not query_file.exists() or not list_file.exists():
        return None
    saved = json.loads(query_file.read_text())
    asked = json.loads(json.dumps({"source": source, "selection": selection.to_json()}))  # tuples as JSON has them
    if saved != asked:
        raise UsageError(f"{out_dir} holds the results of another PACS query ({_describe(saved)}), not of this one "
                         f"({_describe(asked)}); rerun with the same options to resume it, or use a new --out")
    table = pd.read_parquet(list_file)
    return [Instance(**{k: (None if pd.isna(v) else str(v)) for k, v in row.items()}) for row in table[_FIELDS].to_dict("records")]


def save_instances(out_dir: Path, source: dict[str, Any], selection: Selection, instances: Iterable[Instance]) -> list[Instance]:
    """Write the list (once per instance: a PACS that pages unstably may list one twice), then the query."""
    unique: dict[str, Instance] = {}
    for instance in instances:
        unique.setdefault(instance.sop_uid, instance)
    listed = list(unique.values())
    query_file, list_file = list_paths(out_dir)
    list_file.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([asdict(i) for i in listed], columns=_FIELDS).astype("string")
    with atomic_path(list_file) as tmp:
        table.to_parquet(tmp, index=False)
    write_json_atomic(query_file, {"source": source, "selection": selection.to_json()})  # last: it marks the list complete
    log.info("%d instances listed and saved in %s", len(listed), list_file)
    return listed


def _describe(query: dict[str, Any]) -> str:
    source, selection = query.get("source", {}), query.get("selection", {})
    where = ", ".join(f"{k} {v}" for k, v in source.items())
    what = ", ".join(f"{k} {v}" for k, v in selection.items() if v)
    return f"{where}; {what}"
