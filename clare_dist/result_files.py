"""A screening's results for hospital systems, written as files: DICOM for the PACS, FHIR for the EHR.

`clare-dist predict` and `clare-dist embed` write them beside their usual output when asked
(`--dicom-out`, `--fhir-out`); a gateway stores the DICOM folder into the PACS and posts the
FHIR folder to the EHR. The SR and the Secondary Capture go into the screened scan's own study,
so they exist only for a DICOM scan: a PNG or JPEG belongs to no study, and nothing is invented
for it (the result says so, and its FHIR Bundle carries the scan id alone). Files are named by
their own derived UIDs and ids, never by anything of the patient, and a rerun rewrites the same
names. One scan whose results cannot be encoded (a source missing what DICOM requires) gets a
note, and the others go on.
"""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections import Counter
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from clare_dist.atomic import atomic_path, write_json_atomic
from clare_dist.bundle import Bundle
from clare_dist.encode.dicom_sc import explanation_sc
from clare_dist.encode.dicom_sr import screening_sr
from clare_dist.encode.fhir import screening_bundle
from clare_dist.encode.identity import Algorithm, algorithm_of
from clare_dist.errors import ClareError
from clare_dist.result import Screening
from clare_dist.scans import ScanConfig, ScanSource, read_dicom_header
from clare_dist.screening import explanation_of

if TYPE_CHECKING:
    from clare_dist.case_index import CaseIndex

log = logging.getLogger(__name__)

NO_STUDY_NOTE = ("not a DICOM scan, so it belongs to no study: no SR or Secondary Capture was written "
                 "(the FHIR Bundle, if asked for, names the scan id only)")
PICTURE_LABEL = "the screened image"  # the scan's title in the Secondary Capture's pixels
Picture = Callable[[], np.ndarray]  # draws the explanation figure as H×W×3 RGB, only when a Secondary Capture is due


@dataclass(frozen=True)
class ResultFolders:
    """Where the results go; None leaves that output out."""

    dicom: Path | None = None
    fhir: Path | None = None

    @property
    def wanted(self) -> bool:
        return self.dicom is not None or self.fhir is not None


@dataclass(frozen=True)
class ResultFiles:
    """What was written for one scan, and why something was not."""

    paths: list[Path] = field(default_factory=list)
    note: str | None = None


def explanation_picture(bundle: Bundle, index: CaseIndex | None, screening: Screening, source: ScanSource,
                        images_root: Path | None = None, limits: ScanConfig = ScanConfig()) -> np.ndarray:
    """The explanation figure (`screening.explanation_of`) as the Secondary Capture's RGB pixels. The
    scan is titled by a neutral label, not its scan id: a file name may hold patient data, and what
    is drawn into pixels cannot be removed from the PACS's copy by any attribute filter."""
    from clare_dist.plots import figure_rgb  # matplotlib loads only where a picture is drawn

    unnamed = replace(screening, scan_id=PICTURE_LABEL)
    return figure_rgb(explanation_of(bundle, index, unnamed, source, images_root, limits))


def batch_pictures(bundle: Bundle, index: CaseIndex | None, screenings: Sequence[Screening],
                   sources: Sequence[ScanSource], limits: ScanConfig = ScanConfig()) -> list[Picture]:
    """Each scan's explanation picture, drawn at its first use and kept for the batch: the files
    (`write_batch_results`) and the PACS store (`pacs.stages.store_results`) of one batch share
    it, instead of drawing each figure twice (~1 MB of RGB a scan held until the batch is done)."""
    return [functools.cache(lambda s=screening, p=source: explanation_picture(bundle, index, s, p, None, limits))
            for screening, source in zip(screenings, sources)]


def study_uid(header: Dataset | None) -> str | None:
    """The Study Instance UID a FHIR report names the study by; None for a scan that belongs to no study."""
    return str(header.StudyInstanceUID) if header is not None and header.get("StudyInstanceUID") else None


def dicom_bytes(dataset: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file (preamble, file meta), as a PACS stores it."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def write_result_files(screening: Screening, source: ScanSource, algorithm: Algorithm, folders: ResultFolders,
                       picture: Picture | None = None, limits: ScanConfig = ScanConfig()) -> ResultFiles:
    """Write the SR and the Secondary Capture (with `picture`) into `folders.dicom` and the FHIR Bundle
    into `folders.fhir` for one screened scan; a failed screening writes nothing."""
    if not screening.ok or not folders.wanted:
        return ResultFiles()
    try:
        header = read_dicom_header(source, limits)
    except ClareError as err:  # decoded a moment ago; a header that fails now costs this scan's results only
        return ResultFiles(note=_not_written(err))
    paths, notes = [], []
    if folders.dicom is not None:
        if header is None:
            notes.append(NO_STUDY_NOTE)
        else:
            try:
                paths += [_write_dicom(folders.dicom, dataset) for dataset in dicom_results(screening, header, algorithm, picture)]
            except ClareError as err:  # the source lacks what the SR/SC must carry; the FHIR Bundle still goes
                notes.append(_not_written(err))
    if folders.fhir is not None:
        try:
            document = screening_bundle(screening, algorithm, study_uid(header))
            paths.append(write_json_atomic(folders.fhir / f"{document['id']}.json", document))
        except ClareError as err:
            notes.append(_not_written(err))
    return ResultFiles(paths, "; ".join(notes) or None)


def dicom_results(screening: Screening, header: Dataset, algorithm: Algorithm, picture: Picture | None) -> list[Dataset]:
    """The SR and (with `picture`) the Secondary Capture of a screened DICOM scan, in its study;
    ResultEncodingError when the source lacks what they must carry."""
    datasets = [screening_sr(screening, header, algorithm)]
    if picture is not None:
        datasets.append(explanation_sc(screening, header, picture(), algorithm))
    return datasets


def _not_written(err: ClareError) -> str:
    """The note for an output one scan cannot have; the message names what is missing, never a value of the patient's."""
    log.warning("a result of one scan not written: %s", err)
    return f"results not written: {err}"


def write_batch_results(screenings: Sequence[Screening], sources: Sequence[ScanSource], bundle: Bundle,
                        index: CaseIndex | None, folders: ResultFolders, limits: ScanConfig = ScanConfig(),
                        pictures: Sequence[Picture] | None = None) -> int:
    """The result files of one batch of the archive job (in its finish stage, before the rows are
    written: a scan has a row only once its files exist, so a resumed run redoes exactly the rest).
    Returns how many files were written; the notes are counted in the log. `pictures`: the batch's
    (`batch_pictures`), where the PACS store shares them."""
    algorithm, written, notes = algorithm_of(bundle), 0, Counter()
    if folders.dicom is not None and pictures is None:
        pictures = batch_pictures(bundle, index, screenings, sources, limits)
    for i, (screening, source) in enumerate(zip(screenings, sources)):
        picture = pictures[i] if folders.dicom is not None else None
        files = write_result_files(screening, source, algorithm, folders, picture, limits)
        written += len(files.paths)
        notes.update([files.note] if files.note else [])
    for note, count in notes.items():
        log.info("%d scan(s) of this batch: %s", count, note)
    return written


def _write_dicom(folder: Path, dataset: Dataset) -> Path:
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    with atomic_path(path) as tmp:
        tmp.write_bytes(dicom_bytes(dataset))
    return path
