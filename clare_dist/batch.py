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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clare_dist.archive import IMAGE_SUFFIXES
from clare_dist.encode.parquet_row import ROW_SCHEMA, to_table
from clare_dist.ood import OOD_OUTPUT
from clare_dist.result import DEFAULT_K, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, Screening
from clare_dist.rules import References
from clare_dist.scan_cache import ScanCache, preprocess_cached
from clare_dist.scans import ScanConfig, ScanError, preprocess_scan
from clare_dist.screening import screen_points

log = logging.getLogger(__name__)

RESULTS_DIR = "results"
DELIVERIES_DIR = "deliveries"  # results delivered again by a rerun (pacs.redelivery): newest outcome per scan
DELIVERY_SCHEMA = pa.schema([("scan_id", pa.string()), ("results_stored", pa.string()), ("delivered_at", pa.float64())])


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
    """All result rows of an embed output directory, one per scan, sorted by scan id; a scan whose
    results a later run delivered again shows that delivery's outcome in `results_stored`."""
    parts = sorted((Path(out_dir) / RESULTS_DIR).glob("*.parquet"))
    if not parts:
        return ROW_SCHEMA.empty_table().to_pandas()
    table = pa.concat_tables([pq.read_table(p, schema=ROW_SCHEMA) for p in parts])
    results = table.to_pandas().sort_values("scan_id", ignore_index=True)
    deliveries = sorted((Path(out_dir) / DELIVERIES_DIR).glob("*.parquet"))
    if deliveries:
        latest = (pa.concat_tables([pq.read_table(p, schema=DELIVERY_SCHEMA) for p in deliveries]).to_pandas()
                  .sort_values("delivered_at", kind="stable").drop_duplicates("scan_id", keep="last").set_index("scan_id"))
        redelivered = results["scan_id"].isin(latest.index)
        results.loc[redelivered, "results_stored"] = latest.loc[results.loc[redelivered, "scan_id"], "results_stored"].to_numpy()
    return results


def decode_batch(batch: dict[str, np.ndarray], config: ScanConfig, cache: ScanCache | None = None) -> dict[str, np.ndarray]:
    """Stage 1 (CPU tasks): files → uint8 scans (through the decoded-scan cache, if given); a bad
    file becomes status=error with its kind and reason."""
    n = len(batch["path"])
    scans = np.zeros((n, config.size, config.size), dtype=np.uint8)
    status = np.full(n, STATUS_OK, dtype=object)
    kinds, reasons = np.full(n, None, dtype=object), np.full(n, None, dtype=object)
    for i, path in enumerate(batch["path"]):
        try:
            scans[i] = preprocess_scan(str(path), config) if cache is None else preprocess_cached(str(path), config, cache)[0]
        except ScanError as exc:
            status[i], kinds[i], reasons[i] = STATUS_ERROR, exc.kind, exc.message
    return {"scan_id": batch["scan_id"], "path": batch["path"], "status": status, "error_kind": kinds,
            "error_reason": reasons, "scan": scans}


def finish_batch(batch: pd.DataFrame, references: References, model_version: str, index=None,
                 k: int = DEFAULT_K) -> pa.Table:
    """Stage 3 (CPU tasks): coordinates (and OOD scores, an `ood_score` column where the graph has
    them) → Screenings → their Parquet rows."""
    return to_table(finish_screenings(batch, references, model_version, index, k), batch["path"].astype(str))


def finish_screenings(batch: pd.DataFrame, references: References, model_version: str, index=None,
                      k: int = DEFAULT_K) -> list[Screening]:
    """Coordinates → Screenings (R4 decision, top 3, explanation, similar cases; the failed and
    skipped scans as they came), in the batch's order: the same stage functions as one scan through `clare-dist
    predict` or the API."""
    ok = (batch["status"] == STATUS_OK).to_numpy()
    ids = batch["scan_id"].astype(str).tolist()
    coords = batch[["x", "y"]].to_numpy(dtype=np.float64)[ok]
    scores = batch[OOD_OUTPUT].to_numpy(dtype=np.float32)[ok] if OOD_OUTPUT in batch.columns else None
    screened = iter(screen_points(coords, [i for i, good in zip(ids, ok) if good], references, index, model_version, k,
                                  scores))
    return [next(screened) if good else
            (Screening.skipped if status == STATUS_SKIPPED else Screening.failed)(scan_id, str(kind), str(reason), model_version)
            for scan_id, good, status, kind, reason in zip(ids, ok, batch["status"], batch["error_kind"], batch["error_reason"])]


def inputs_table(inputs: Iterable[ScanInput]) -> pd.DataFrame:
    items = list(inputs)
    return pd.DataFrame({"scan_id": [s.scan_id for s in items], "path": [s.path for s in items]})
