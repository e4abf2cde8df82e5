"""The reading order of a screened backlog: which scans a radiologist should take first.

The morning after an overnight run, the question is not "what did each scan get" but "which
do I read first". The method gives an answer without any threshold: a scan's point lies
somewhere between the No Finding reference and the abnormal ones. The triage score is the
share of the way from No Finding to the nearest abnormal reference,

    score = d(No Finding) / (d(No Finding) + d(nearest abnormal reference))   in [0, 1],

0 on the No Finding reference, 1 on an abnormal one, 0.5 where both are as near. It ranks; it
does not decide (the R4 decision does), so nothing in it is chosen from data, and its quality is
measured as the AUROC for "any finding" on the cross-validation test folds (evaluation.py).

A scan flagged for human review (`clare_dist.ood`: outside what the model knows) gets no place in
that ranking: its point, and so its triage score, is not to be relied on. The flagged scans form a
group of their own after the ranked ones, the most unusual first, and the scans that could not be
screened come last.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clare_dist.atomic import atomic_path
from clare_dist.labels import NO_FINDING
from clare_dist.ood import review_note
from clare_dist.result import STATUS_OK
from clare_dist.rules import References

WORKLIST_FILE = "worklist.csv"
WORKLIST_COLUMNS: tuple[str, ...] = ("rank", "scan_id", "status", "needs_review", "triage_score", "decision", "why")


def triage_scores(coords: np.ndarray, references: References) -> np.ndarray:
    """The triage score of N points (N × 2): higher is more likely abnormal."""
    points = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    distances = np.linalg.norm(points[:, None, :] - references.coords[None, :, :], axis=2)
    normal = np.array([name == NO_FINDING for name in references.names])
    to_normal = distances[:, normal][:, 0]
    to_abnormal = distances[:, ~normal].min(axis=1)
    total = to_normal + to_abnormal
    return np.divide(to_normal, total, out=np.full(len(points), 0.5), where=total > 0)


def worklist(results: pd.DataFrame, references: References) -> pd.DataFrame:
    """`results` as the batch job writes them (`batch.read_results`). The screened scans in reading
    order, most likely abnormal first, with the decision and why; then the scans flagged for human
    review, the most unusual first; then the scans that could not be screened, each with its reason
    (a person must look at both)."""
    if "needs_review" not in results.columns:  # a table of results from before the flag
        results = results.assign(needs_review=None, ood_score=np.nan)
    screened = results[results["status"] == STATUS_OK]
    flagged = screened["needs_review"].eq(True).to_numpy(dtype=bool)
    ok = screened[~flagged].copy()
    ok["triage_score"] = triage_scores(ok[["x", "y"]].to_numpy(dtype=np.float64), references).round(4)
    ok = ok.sort_values(["triage_score", "scan_id"], ascending=[False, True], kind="mergesort")
    ok["decision"], ok["why"] = ok["combination"], ok["explanation"]
    review = screened[flagged].sort_values(["ood_score", "scan_id"], ascending=[False, True], kind="mergesort").copy()
    review["triage_score"], review["decision"] = np.nan, review["combination"]
    review["why"] = [review_note(True, score) for score in review["ood_score"]]
    failed = results[results["status"] != STATUS_OK].sort_values("scan_id", kind="mergesort").copy()
    failed["triage_score"], failed["decision"], failed["needs_review"] = np.nan, None, None
    failed["why"] = "not screened (" + failed["error"].astype(str).str.replace(": ", "): ", n=1, regex=False)
    ordered = pd.concat([ok, review, failed], ignore_index=True)
    ordered["rank"] = np.arange(1, len(ordered) + 1)
    return ordered[list(WORKLIST_COLUMNS)]


def write_worklist(out_dir: Path, results: pd.DataFrame, references: References) -> Path:
    """`out_dir/worklist.csv`: the whole run's reading order (a resumed run's covers every scan)."""
    with atomic_path(Path(out_dir) / WORKLIST_FILE) as tmp:
        worklist(results, references).to_csv(tmp, index=False)
    return Path(out_dir) / WORKLIST_FILE
