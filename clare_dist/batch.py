"""Archive screening in batches: the stages the Ray Data job maps over, and its resumable output.

Each stage takes and returns one batch (columns as arrays), so the same functions run in a
Ray task, in an actor, or in a plain loop. Every input scan leaves exactly one row: `ok`
with its decision, or `error` with the reason (a bad scan never stops the archive). Output
goes to `results/` as Parquet part files; a rerun reads the parts that are complete, drops
the ones a kill cut short, and screens only the scans not yet there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clare_dist.archive import IMAGE_SUFFIXES
from clare_dist.labels import CLASSES
from clare_dist.rules import References
from clare_dist.scans import ScanConfig, ScanError, preprocess_scan
from clare_dist.screening import classify, explain, similar

log = logging.getLogger(__name__)

RESULTS_DIR = "results"
STATUS_OK = "ok"
STATUS_ERROR = "error"

SIMILAR_CASE = pa.struct([("case_id", pa.string()), ("combination", pa.string()), ("distance", pa.float32())])
RESULT_SCHEMA = pa.schema([
    ("scan_id", pa.string()), ("path", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("x", pa.float32()), ("y", pa.float32()),
    ("top3", pa.list_(pa.string())), ("top3_distances", pa.list_(pa.float32())),
    ("combination", pa.string()), *[(code, pa.int8()) for code in CLASSES],
    ("explanation", pa.string()), ("similar_cases", pa.list_(SIMILAR_CASE)), ("similar_note", pa.string()),
    ("model_version", pa.string()),
])
RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA.names)


@dataclass(frozen=True)
class ScanInput:
    scan_id: str
    path: str


def list_archive(source: str | os.PathLike) -> list[ScanInput]:
    """The scans of an archive: a directory tree, or a CSV/Parquet manifest with a `path` column.

    In a tree, files with an image suffix and files without a suffix (DICOM is often stored
    so) are scans; hidden files are not. The scan id is the path relative to the tree, which
    is unique and carries nothing but what the site put in its file names.
    """
    root = Path(source)
    if root.is_dir():
        found = []
        for dirpath, dirnames, files in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or not (name.lower().endswith(IMAGE_SUFFIXES) or "." not in name):
                    continue
                path = Path(dirpath) / name
                found.append(ScanInput(path.relative_to(root).as_posix(), str(path)))
        return found
    if root.suffix.lower() in (".csv", ".parquet"):
        table = pd.read_parquet(root) if root.suffix.lower() == ".parquet" else pd.read_csv(root)
        if "path" not in table.columns:
            raise ValueError(f"the manifest {root} needs a 'path' column (found {list(table.columns)})")
        paths = [Path(p) if Path(p).is_absolute() else root.parent / p for p in table["path"].astype(str)]
        ids = table["scan_id"].astype(str) if "scan_id" in table.columns else table["path"].astype(str)
        if ids.duplicated().any():
            raise ValueError(f"the manifest {root} lists the same scan more than once, e.g. {ids[ids.duplicated()].iloc[0]}")
        return [ScanInput(i, str(p)) for i, p in zip(ids, paths)]
    raise FileNotFoundError(f"{root} is neither a directory of scans nor a .csv/.parquet manifest with a 'path' column")


def completed_scan_ids(out_dir: str | os.PathLike) -> set[str]:
    """Scan ids already in complete part files; part files a kill cut short are removed."""
    results = Path(out_dir) / RESULTS_DIR
    done: set[str] = set()
    for part in sorted(results.glob("*.parquet")):
        try:
            ids = pq.read_table(part, columns=["scan_id"]).column("scan_id").to_pylist()
        except (pa.ArrowInvalid, OSError) as exc:
            log.warning("removing %s, cut short by an interruption (%s); its scans are screened again", part.name, exc)
            part.unlink()
            continue
        done.update(ids)
    return done


def read_results(out_dir: str | os.PathLike) -> pd.DataFrame:
    """All result rows of an embed output directory, one per scan, sorted by scan id."""
    parts = sorted((Path(out_dir) / RESULTS_DIR).glob("*.parquet"))
    if not parts:
        return RESULT_SCHEMA.empty_table().to_pandas()
    table = pa.concat_tables([pq.read_table(p, schema=RESULT_SCHEMA) for p in parts])
    return table.to_pandas().sort_values("scan_id", ignore_index=True)


def decode_batch(batch: dict[str, np.ndarray], config: ScanConfig) -> dict[str, np.ndarray]:
    """Stage 1 (CPU tasks): files → uint8 scans; a bad file becomes status=error with its reason."""
    n = len(batch["path"])
    scans = np.zeros((n, config.size, config.size), dtype=np.uint8)
    status = np.full(n, STATUS_OK, dtype=object)
    errors = np.full(n, None, dtype=object)
    for i, path in enumerate(batch["path"]):
        try:
            scans[i] = preprocess_scan(str(path), config)
        except ScanError as exc:
            status[i], errors[i] = STATUS_ERROR, f"{exc.kind}: {exc}"
    return {"scan_id": batch["scan_id"], "path": batch["path"], "status": status, "error": errors, "scan": scans}


def finish_batch(batch: pd.DataFrame, references: References, model_version: str, index=None, k: int = 9) -> pd.DataFrame:
    """Stage 3 (CPU tasks): coordinates → R4 decision, top 3, explanation, similar cases.

    The same stage functions as one scan through `clare-dist predict` or the API.
    """
    ok = (batch["status"] == STATUS_OK).to_numpy()
    # Nulls change type on their way through Arrow and numpy batches; rebuild them here.
    errors = [str(e) for e in batch["error"][~ok]]
    out = pd.DataFrame({"scan_id": batch["scan_id"].astype(str), "path": batch["path"].astype(str),
                        "status": np.where(ok, STATUS_OK, STATUS_ERROR), "error": _spread(~ok, errors)})
    coords = batch[["x", "y"]].to_numpy(dtype=np.float64)
    for column in ("x", "y"):
        out[column] = np.where(ok, batch[column].to_numpy(dtype=np.float32), np.nan).astype(np.float32)
    rules = classify(coords[ok], references)
    decisions = list(rules.decision)
    found = similar(index, coords[ok], decisions, k)
    out["top3"] = _spread(ok, [list(t) for t in rules.top3])
    out["top3_distances"] = _spread(ok, [list(map(float, d)) for d in rules.distances])
    out["combination"] = _spread(ok, decisions)
    for j, code in enumerate(CLASSES):
        out[code] = pd.array(_spread(ok, rules.bits["r4"][:, j].tolist()), dtype="Int8")
    out["explanation"] = _spread(ok, explain(rules))
    out["similar_cases"] = _spread(ok, [[asdict(case) for case in cases] for cases in found.cases])
    out["similar_note"] = _spread(ok, found.notes)
    out["model_version"] = model_version
    return out[list(RESULT_COLUMNS)]


def _spread(mask: np.ndarray, values: Sequence) -> list:
    """Values for the rows where `mask` is set, None elsewhere."""
    it = iter(values)
    return [next(it) if m else None for m in mask]


def inputs_table(inputs: Iterable[ScanInput]) -> pd.DataFrame:
    items = list(inputs)
    return pd.DataFrame({"scan_id": [s.scan_id for s in items], "path": [s.path for s in items]})
