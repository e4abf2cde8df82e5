"""Results that did not reach the PACS, delivered again by a rerun into the same output.

A row is final once written (a rerun skips its scan), but a store that failed is not: the PACS
was down, timed out, refused, or reported success for objects a query then did not find. A
rerun with `--store-results` into the same folder retrieves those instances again, remakes the
SR and Secondary Capture from the row's screening (the same objects: their UIDs are derived, so
a store replaces and never duplicates), stores and confirms them, and appends each outcome to
`deliveries/`; `batch.read_results` lays the newest outcome over the row's `results_stored`.
Results that could not be made from the source ("not made: …") are not retried: the same source
cannot make them another time.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clare_dist.atomic import atomic_path
from clare_dist.batch import DELIVERIES_DIR, DELIVERY_SCHEMA
from clare_dist.bundle import Bundle
from clare_dist.encode.parquet_row import from_row
from clare_dist.pacs.selection import Instance
from clare_dist.pacs.stages import Pacs, retrieve, store_results
from clare_dist.result import STATUS_OK, Screening
from clare_dist.scans import SCAN_ERROR_KINDS, ScanConfig

log = logging.getLogger(__name__)

RETRIED = ("failed:", "stored, not confirmed:")  # what a rerun delivers again


def undelivered(results: pd.DataFrame) -> pd.DataFrame:
    """The screened rows whose results the PACS does not hold (as far as the run knows)."""
    stored = results["results_stored"].fillna("").astype(str)
    return results[(results["status"] == STATUS_OK) & stored.str.startswith(RETRIED)]


def screenings_of(rows: pd.DataFrame) -> list[Screening]:
    """The screenings the rows were written from, to make the same results again."""
    return [from_row(row, SCAN_ERROR_KINDS) for row in rows.to_dict("records")]


def redeliver(screenings: Sequence[Screening], instances: Sequence[Instance], pacs: Pacs, bundle: Bundle, index,
              limits: ScanConfig) -> list[str]:
    """Retrieve each instance, store its screening's results in its study and confirm them; per
    instance "confirmed" or why not (a retrieval that fails is that instance's "failed: …")."""
    retrieved = retrieve(pacs, list(instances), limits.max_file_bytes)
    sources = [None if isinstance(data, Exception) else data for data in retrieved]
    stored = store_results(screenings, sources, bundle, index, pacs, limits)  # the batch's, as the finish stage stores
    return [f"failed: {data.kind}: {data.message}" if isinstance(data, Exception) else str(outcome)
            for data, outcome in zip(retrieved, stored, strict=True)]


def write_deliveries(out_dir: str | os.PathLike, scan_ids: Sequence[str], outcomes: Sequence[str]) -> Path | None:
    """Append one redelivery's outcomes to `out_dir/deliveries/` (a whole file or none)."""
    if not scan_ids:
        return None
    now = time.time()
    table = pa.table({"scan_id": list(scan_ids), "results_stored": list(outcomes),
                      "delivered_at": pa.array([now] * len(scan_ids), pa.float64())}, schema=DELIVERY_SCHEMA)
    path = Path(out_dir) / DELIVERIES_DIR / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:8]}.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    confirmed = sum(o == "confirmed" for o in outcomes)
    log.info("results delivered again: %d of %d confirmed (%s)", confirmed, len(outcomes), path.name)
    return path
