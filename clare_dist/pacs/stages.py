"""The PACS stages of the archive job: retrieve and decode a batch, store its results back.

Like `clare_dist.batch`, each takes and returns one batch, so they run in a Ray task or a plain
loop. Every listed instance leaves one row: screened, `skipped` (outside the selection, decided
from the query's attributes and again from the retrieved header) or `error` with the PACS's or
the decoder's reason. Results go back before the row is written, and each stored object is
queried back: the row says "confirmed" only when the PACS shows it.
"""

from __future__ import annotations

import logging
from typing import Sequence, Union

import numpy as np
import pandas as pd

from clare_dist.bundle import Bundle
from clare_dist.errors import ClareError
from clare_dist.pacs.dicomweb import DicomWebPacs
from clare_dist.pacs.dimse import DimsePacs
from clare_dist.pacs.errors import PacsError
from clare_dist.pacs.selection import Instance, Selection
from clare_dist.result import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, Screening
from clare_dist.scans import ScanConfig, ScanError, preprocess_scan, read_dicom_header

log = logging.getLogger(__name__)

Pacs = Union[DicomWebPacs, DimsePacs]
INSTANCE_COLUMNS = ("study_uid", "series_uid", "sop_uid", "modality", "body_part", "view")
CONFIRMED = "confirmed"


def instances_table(instances: Sequence[Instance]) -> pd.DataFrame:
    """The job's input rows: the scan id is the SOP Instance UID, the path its place in the PACS."""
    table = pd.DataFrame([{name: getattr(i, name) for name in INSTANCE_COLUMNS} for i in instances],
                         columns=list(INSTANCE_COLUMNS))
    return table.assign(scan_id=table["sop_uid"], path=[i.wado_path for i in instances])


def instances_of(columns) -> list[Instance]:
    """The instances of a batch or table holding the job's INSTANCE_COLUMNS (its saved instance list)."""
    return [Instance(*(None if v is None or v != v else str(v) for v in values))
            for values in zip(*(columns[c] for c in INSTANCE_COLUMNS))]


def fetch_decode_batch(batch: dict[str, np.ndarray], pacs: Pacs, selection: Selection, config: ScanConfig,
                       keep_source: bool) -> dict[str, np.ndarray]:
    """Stage 1 for a PACS: instances → uint8 scans. `keep_source` carries each retrieved object on
    to the finish stage, where its SR and Secondary Capture are made in its study."""
    n = len(batch["scan_id"])
    instances = instances_of(batch)
    scans = np.zeros((n, config.size, config.size), dtype=np.uint8)
    status, kinds, reasons = np.full(n, STATUS_OK, dtype=object), np.full(n, None, dtype=object), np.full(n, None, dtype=object)
    sources = np.full(n, None, dtype=object)
    wanted = []
    for i, instance in enumerate(instances):
        skip = selection.skip(instance)
        if skip:
            status[i], (kinds[i], reasons[i]) = STATUS_SKIPPED, skip
        else:
            wanted.append(i)
    for i, data in zip(wanted, retrieve(pacs, [instances[i] for i in wanted], config.max_file_bytes)):
        if isinstance(data, (ScanError, PacsError)):
            status[i], kinds[i], reasons[i] = STATUS_ERROR, data.kind, data.message
            continue
        try:
            skip = _header_skip(data, instances[i], selection, config)
            if skip:
                status[i], (kinds[i], reasons[i]) = STATUS_SKIPPED, skip
                continue
            scans[i] = preprocess_scan(data, config)
            sources[i] = data if keep_source else None
        except ScanError as err:
            status[i], kinds[i], reasons[i] = STATUS_ERROR, err.kind, err.message
    return {"scan_id": batch["scan_id"], "path": batch["path"], "status": status, "error_kind": kinds,
            "error_reason": reasons, "scan": scans, "source": sources}


def retrieve(pacs: Pacs, instances: list[Instance], max_bytes: int) -> list[bytes | Exception]:
    """Each instance's bytes, or its error; a PACS gone (after the retries) is the error of the batch's rest."""
    if isinstance(pacs, DimsePacs):
        try:
            return pacs.retrieve_many(instances, max_bytes) if instances else []
        except PacsError as err:
            return [err] * len(instances)
    results: list[bytes | Exception] = []
    for k, instance in enumerate(instances):
        try:
            results.append(pacs.retrieve(instance, max_bytes))
        except PacsError as err:
            if err.kind in ("pacs_auth", "pacs_unreachable"):
                return results + [err] * (len(instances) - k)
            results.append(err)
        except ScanError as err:
            results.append(err)
    return results


def _header_skip(data: bytes, listed: Instance, selection: Selection, config: ScanConfig) -> tuple[str, str] | None:
    """The selection applied to the retrieved header, which may say what the query did not return."""
    header = read_dicom_header(data, config)
    if header is None:
        raise ScanError("not_an_image", "the PACS returned an object that is not DICOM for this instance")
    return selection.skip(Instance.from_header(header, listed.study_uid, listed.series_uid, listed.sop_uid))


def result_datasets(screening: Screening, header, bundle: Bundle, picture) -> list:
    """The SR and Secondary Capture (drawn by `picture`) of a screened DICOM scan, in its study
    (result_files.dicom_results)."""
    from clare_dist.encode.identity import algorithm_of
    from clare_dist.result_files import dicom_results

    return dicom_results(screening, header, algorithm_of(bundle), picture)


def store_confirmed(pacs: Pacs, datasets: Sequence, study_uid: str) -> str:
    """Store the datasets, then query them back: CONFIRMED, or what the query did not find.
    A success status alone does not prove the PACS kept an object."""
    pacs.store(datasets)
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    missing = len(uids) - len(pacs.stored(study_uid, uids))
    return CONFIRMED if not missing else (f"stored, not confirmed: the PACS reported success but a query finds {missing} "
                                          f"of {len(uids)} result objects missing")


def store_results(screenings: Sequence[Screening], sources: Sequence[bytes | None], bundle: Bundle, index, pacs: Pacs,
                  limits: ScanConfig, pictures: Sequence | None = None) -> list[str | None]:
    """Store each screened scan's SR and Secondary Capture in its study and query them back; per scan,
    "confirmed" or why not (None for a scan with no results to store). `pictures`: the batch's
    (`result_files.batch_pictures`), where the result files share them."""
    from clare_dist.result_files import batch_pictures

    if pictures is None:
        pictures = batch_pictures(bundle, index, screenings, sources, limits)
    outcome: list[str | None] = []
    for screening, source, picture in zip(screenings, sources, pictures):
        if not screening.ok or source is None:
            outcome.append(None)
            continue
        try:
            header = read_dicom_header(source, limits)
            datasets = result_datasets(screening, header, bundle, picture)
            outcome.append(store_confirmed(pacs, datasets, str(header.StudyInstanceUID)))
        except PacsError as err:
            outcome.append(f"failed: {err.kind}: {err.message}")
        except ClareError as err:  # the source lacks what the SR/SC must carry
            outcome.append(f"not made: {err}")
    counts = pd.Series([o.split(":")[0] for o in outcome if o]).value_counts().to_dict()
    if counts:
        log.info("results stored back: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return outcome
