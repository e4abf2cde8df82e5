"""The morning report of an archive run: `DIR/report.html`, one self-contained page.

Hospital IT opens it after an overnight run to see, without tools or a network, how many scans
were screened, what was predicted, where the predictions lie, which scans failed and why, and a
few scans explained as a clinician would see them. Everything is in the one file (figures as
base64 PNG data URIs, inline CSS), so it can be mailed or archived as it is.

It names scans by their scan ids (paths relative to the archive) and known cases by their case
ids, nothing more, and every string taken from the data is HTML-escaped: a file name is not
trusted to be harmless.
"""

from __future__ import annotations

import base64
import logging
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from clare_dist.atomic import write_text_atomic
from clare_dist.bundle import Bundle
from clare_dist.encode.parquet_row import from_row
from clare_dist.labels import COMBINATION_INDEX
from clare_dist.ood import review_note
from clare_dist.pacs.errors import PACS_ERROR_KINDS, SKIP_KINDS
from clare_dist.result import INTENDED_USE, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, Screening
from clare_dist.rules import layout_check
from clare_dist.scans import SCAN_ERROR_KINDS, ScanConfig, ScanError
from clare_dist.screening import THUMBNAIL_SIZE, case_images, decode
from clare_dist.triage import WORKLIST_FILE, worklist

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from clare_dist.case_index import CaseIndex

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
MAX_POINTS = 20_000  # predicted points drawn on the reference space; more are subsampled
MAX_FAILURES = 500  # failed scans listed one by one; the rest are counted
WORKLIST_SHOWN = 25  # first scans of the reading order shown; worklist.csv has them all
FIGURE_DPI = 80  # enough to read on a screen, small enough to keep the page a few MB

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.use { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.5em 1em; }
.warn { background: #fde8e8; border-left: 4px solid #c62828; padding: 0.5em 1em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; } code { font-size: 0.95em; }
"""


def write_report(out_dir: Path, results: pd.DataFrame, bundle: Bundle, index: CaseIndex | None = None,
                 images_root: Path | None = None, sample: int = 6, seed: int = 0) -> Path:
    """Write the run's report to `out_dir / "report.html"` and return that path.

    `results` is what `batch.read_results(out_dir)` returns. Sample scans are read from their
    `path`; similar cases' thumbnails from the index, relative paths under `images_root`
    (default: the working directory). An unreadable image or a missing index gives a
    placeholder or a note, not a failed report. Written to a temporary file and renamed, so a
    reader never sees half a report.
    """
    results = results.sort_values("scan_id", ignore_index=True)  # the same report whatever the row order
    ok = results[results["status"] == STATUS_OK].reset_index(drop=True)
    sections = [
        _summary(results, bundle),
        _reading_order(results, bundle),
        _needs_review(ok),
        _counts(ok),
        _reference_space(ok, bundle, seed),
        _failures(results[results["status"] == STATUS_ERROR]),
        *([_failures(results[results["status"] == STATUS_SKIPPED], skipped=True)] if (results["status"] == STATUS_SKIPPED).any() else []),
        _explained(ok, bundle, index, images_root, sample, seed),
    ]
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>clare-dist archive report: {len(results):,} scans</title>\n<style>{_CSS}</style>\n</head>\n"
            f"<body>\n{''.join(sections)}</body>\n</html>\n")
    out = write_text_atomic(Path(out_dir) / REPORT_FILE, page)
    log.info("wrote the report of %d scans to %s (%.1f MB)", len(results), out, out.stat().st_size / 1e6)
    return out


def _summary(results: pd.DataFrame, bundle: Bundle) -> str:
    """What ran, on how much, with which model, when, and what the output may be used for."""
    n_ok = int((results["status"] == STATUS_OK).sum())
    n_error = int((results["status"] == STATUS_ERROR).sum())
    n_skipped = int((results["status"] == STATUS_SKIPPED).sum())
    rows = [
        ("Scans", f"{len(results):,}"),
        ("Screened (ok)", f"{n_ok:,}"),
        ("Failed (error)", f"{n_error:,}"),
        *([("Skipped (outside what is screened)", f"{n_skipped:,}")] if n_skipped else []),
        *_stored_rows(results),
        ("Needs human review", f"{int(results['needs_review'].eq(True).sum()):,}" if results["needs_review"].notna().any()
         else "not checked (a model bundle without the OOD score)"),
        ("Model version", escape(bundle.model_version)),
        ("Model", escape(f"{bundle.manifest.get('backbone', '?')}, {bundle.image_size} px input")),
        ("Reference layout", escape(layout_check(bundle.references))),
        ("Report written", datetime.now(timezone.utc).isoformat(timespec="seconds")),
    ]
    table = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>\n" for name, value in rows)
    html = (f"<h1>Archive screening report</h1>\n<p class=\"use\">Intended use: {escape(INTENDED_USE)}.</p>\n"
            f'<table id="summary">\n{table}</table>\n')
    others = sorted(set(results["model_version"].dropna().astype(str)) - {bundle.model_version})
    if others:  # rows from another model, e.g. a run resumed with a retrained bundle
        html += (f'<p class="warn">Some rows were made by another model version: '
                 f"{escape(', '.join(others))}. Their points are not comparable with this model's.</p>\n")
    return html


def _stored_rows(results: pd.DataFrame) -> list[tuple[str, str]]:
    """What became of the results a PACS run stored back: confirmed, or failed (their reasons are in the rows)."""
    stored = results["results_stored"].dropna().astype(str) if "results_stored" in results else pd.Series([], dtype=str)
    if stored.empty:
        return []
    confirmed = int((stored == "confirmed").sum())
    return [("Results stored in the PACS and confirmed", f"{confirmed:,}"),
            ("Results not stored or not confirmed", f"{len(stored) - confirmed:,}")]


def _counts(ok: pd.DataFrame) -> str:
    """How many scans got each decision: the first thing to compare with the site's expectations."""
    html = "<h2>Predicted combinations</h2>\n"
    if ok.empty:
        return html + "<p>No scan was screened successfully, so there are no predictions to count.</p>\n"
    counts = ok["combination"].value_counts()
    rows = "".join(
        f'<tr><td>{escape(str(name))}</td><td class="n">{count:,}</td><td class="n">{100 * count / len(ok):.1f}</td></tr>\n'
        for name, count in sorted(counts.items(), key=lambda item: _combination_order(item[0]))
    )
    return html + (f'<table id="counts">\n<thead><tr><th>Combination (R4)</th><th>Scans</th>'
                   f"<th>Share of screened scans (%)</th></tr></thead>\n<tbody>\n{rows}</tbody>\n"
                   f'<tfoot><tr><th>All</th><td class="n">{len(ok):,}</td><td class="n">100.0</td></tr></tfoot>\n'
                   "</table>\n<p>Combinations in the canonical order; R4 can join up to 4 classes, "
                   "and such combinations (outside the 26) come last.</p>\n")


def _reference_space(ok: pd.DataFrame, bundle: Bundle, seed: int) -> str:
    """Where the whole archive landed: clusters, and points far from every reference, show at a glance."""
    from clare_dist.plots import archive_predictions_figure  # matplotlib loads only where figures are drawn

    fig = archive_predictions_figure(bundle.references, ok[["x", "y"]].to_numpy(dtype=float),
                                     ok["combination"].astype(str).to_numpy(), max_points=MAX_POINTS, seed=seed)
    if ok.empty:
        caption = "No scan was screened successfully; only the 26 references are drawn."
    elif len(ok) > MAX_POINTS:
        caption = (f"A seeded uniform sample of {MAX_POINTS:,} of the {len(ok):,} screened scans is drawn "
                   f"(seed {seed}), to keep the figure readable; the counts above are of all scans.")
    else:
        caption = f"All {len(ok):,} screened scans, coloured by predicted combination."
    return (f"<h2>Predictions on the reference space</h2>\n<figure>{_img(fig, 'predicted points')}"
            f"<figcaption>{caption}</figcaption></figure>\n")


def _reading_order(results: pd.DataFrame, bundle: Bundle) -> str:
    """The first scans of the worklist: what a reader takes first the morning after the run."""
    order = worklist(results, bundle.references)
    html = (f"<h2>Reading worklist</h2>\n<p>The scans most likely abnormal first, by the triage score (0 on the No "
            f"Finding reference, 1 on an abnormal one); the first {min(len(order), WORKLIST_SHOWN):,} of {len(order):,}. "
            f"All of them, failed scans last, are in <code>{WORKLIST_FILE}</code>.</p>\n")
    html += ('<table id="worklist">\n<thead><tr><th>Rank</th><th>Scan id</th><th>Triage score</th><th>Decision</th>'
             "<th>Why</th></tr></thead>\n<tbody>\n")
    html += "".join(
        f'<tr><td class="n">{row.rank}</td><td><code>{escape(str(row.scan_id))}</code></td><td class="n">'
        f'{"" if pd.isna(row.triage_score) else f"{row.triage_score:.3f}"}</td><td>{escape(str(row.decision or ""))}</td>'
        f"<td>{escape(str(row.why))}</td></tr>\n"
        for row in order.head(WORKLIST_SHOWN).itertuples()
    )
    return html + "</tbody>\n</table>\n"


def _needs_review(ok: pd.DataFrame) -> str:
    """The scans the model should not judge alone, apart: outside what it knows (`clare_dist.ood`)."""
    html = "<h2>Needs human review</h2>\n"
    unchecked = int(ok["needs_review"].isna().sum())
    if unchecked == len(ok) and len(ok):
        return html + (f'<p class="warn">{escape(review_note(None, None))}. Every decision below is given '
                       "without knowing whether the scan lies within what the model knows.</p>\n")
    flagged = ok[ok["needs_review"].eq(True).to_numpy(dtype=bool)].sort_values(["ood_score", "scan_id"],
                                                                           ascending=[False, True], kind="mergesort")
    if unchecked:  # rows of a run resumed with another bundle
        html += f'<p class="warn">{unchecked:,} screened scans: {escape(review_note(None, None))}.</p>\n'

    html += (f"<p>{len(flagged):,} of {len(ok):,} screened scans lie outside what the model knows (OOD score above 1: "
             "the Mahalanobis distance of the regressor's features to the training archive's, in units of the threshold "
             "fitted on validation scans). Their decisions are not to be relied on; they come after the ranked scans in "
             f"<code>{WORKLIST_FILE}</code>.</p>\n")
    if flagged.empty:
        return html
    html += ('<table id="needs-review">\n<thead><tr><th>Scan id</th><th>OOD score</th><th>Decision (not to be relied on)'
             "</th></tr></thead>\n<tbody>\n")
    html += "".join(f'<tr><td><code>{escape(str(row.scan_id))}</code></td><td class="n">{row.ood_score:.2f}</td>'
                    f"<td>{escape(str(row.combination))}</td></tr>\n" for row in flagged.head(MAX_FAILURES).itertuples())
    html += "</tbody>\n</table>\n"
    if len(flagged) > MAX_FAILURES:
        html += (f"<p>The first {MAX_FAILURES:,} are listed; all {len(flagged):,} are in the results Parquet files "
                 "(needs_review = true) and the worklist.</p>\n")
    return html


def _failures(errors: pd.DataFrame, skipped: bool = False) -> str:
    """Which scans were not screened and why, grouped by kind so a systematic problem stands out
    (the failed ones, or with `skipped` those outside what is screened)."""
    kinds_id, rows_id, word = ("skip-kinds", "skipped", "skipped") if skipped else ("failure-kinds", "failures", "failed")
    html = "<h2>Skipped scans</h2>\n" if skipped else "<h2>Failed scans</h2>\n"
    if errors.empty:
        return html + "<p>No scan failed.</p>\n"
    failed = [row_screening(row) for _, row in errors.iterrows()]
    kinds, reasons = [s.error_kind for s in failed], [s.error_reason for s in failed]
    by_kind = pd.Series(kinds).value_counts()
    html += f'<table id="{kinds_id}">\n<thead><tr><th>Kind</th><th>Scans</th></tr></thead>\n<tbody>\n'
    html += "".join(f'<tr><td>{escape(kind)}</td><td class="n">{n:,}</td></tr>\n' for kind, n in by_kind.items())
    html += f'</tbody>\n</table>\n<table id="{rows_id}">\n<thead><tr><th>Scan id</th><th>Kind</th><th>Reason</th></tr></thead>\n<tbody>\n'
    html += "".join(
        f"<tr><td><code>{escape(str(scan_id))}</code></td><td>{escape(kind)}</td><td>{escape(reason)}</td></tr>\n"
        for scan_id, kind, reason in list(zip(errors["scan_id"], kinds, reasons))[:MAX_FAILURES]
    )
    html += "</tbody>\n</table>\n"
    if len(errors) > MAX_FAILURES:
        html += (f'<p id="{rows_id}-more">The first {MAX_FAILURES:,} by scan id are listed; {len(errors) - MAX_FAILURES:,} '
                 f"more {word} scans are in the results Parquet files (status = {'skipped' if skipped else 'error'}).</p>\n")
    return html


def _explained(ok: pd.DataFrame, bundle: Bundle, index: CaseIndex | None, images_root: Path | None,
               sample: int, seed: int) -> str:
    """A few scans explained in full, so a reader can judge whether the decisions look sensible."""
    from clare_dist.case_index import UnknownCaseError
    from clare_dist.plots import explanation_figure

    html = "<h2>Explained scans (a sample)</h2>\n"
    chosen = choose_sample(ok, sample, seed)
    if chosen.empty:
        return html + "<p>No scan was screened successfully, so there is none to explain.</p>\n"
    html += (f"<p>{len(chosen)} of {len(ok):,} screened scans, chosen at random (seed {seed}) "
             "with as many different predicted combinations as possible.</p>\n")
    for _, row in chosen.iterrows():
        screening = row_screening(row)
        notes = [screening.similar_note] if screening.similar_note else []
        try:
            scan = decode(str(row["path"]), ScanConfig(size=THUMBNAIL_SIZE))
        except ScanError as err:
            scan = None
            notes.append(f"the scan image could not be read again ({err.kind}), so it is not shown")
        try:
            cases = case_images(index, screening, images_root, THUMBNAIL_SIZE)
        except UnknownCaseError:  # the index was rebuilt after this run
            cases = [(c.case_id, c.combination, c.distance, None) for c in screening.similar_cases]
            notes.append("the similar cases are no longer in the case index, so their images are not shown")
        fig = explanation_figure(screening, bundle.references, cases, INTENDED_USE, scan_image=scan)
        note = "".join(f"<br>Note: {escape(n)}." for n in notes)
        html += (f'<figure class="explained">{_img(fig, "explanation of " + screening.scan_id)}'
                 f"<figcaption><code>{escape(screening.scan_id)}</code>: {escape(screening.combination)}. "
                 f"{escape(screening.explanation)}{note}</figcaption></figure>\n")
    return html


def choose_sample(ok: pd.DataFrame, sample: int, seed: int) -> pd.DataFrame:
    """Up to `sample` ok rows, seeded: one of each predicted combination before a second of any.

    Combinations take turns most frequent first (ties in canonical order); within one, rows are
    in a seeded random order. The same rows and seed give the same sample.
    """
    if ok.empty or sample <= 0:
        return ok.iloc[:0]
    shuffled = ok.iloc[np.random.default_rng(seed).permutation(len(ok))]
    names = shuffled["combination"].astype(str)
    turn = names.groupby(names, sort=False).cumcount().to_numpy()
    frequency = names.map(names.value_counts()).to_numpy()
    canonical = np.array([_combination_order(name)[0] for name in names])
    order = np.lexsort((np.arange(len(shuffled)), canonical, -frequency, turn))
    return shuffled.iloc[order[:sample]]


def row_screening(row: Mapping[str, Any]) -> Screening:
    """A results row as the Screening it was written from."""
    return from_row(row, SCAN_ERROR_KINDS + PACS_ERROR_KINDS + SKIP_KINDS)


def _combination_order(name: str) -> tuple[int, str]:
    """Canonical order of the 26, then any combination outside them (R4 can make 4 classes)."""
    return COMBINATION_INDEX.get(name, len(COMBINATION_INDEX)), name


def _img(fig: Figure, alt: str) -> str:
    """The figure as an <img> with a base64 PNG data URI; the figure is cleared afterwards."""
    from clare_dist.plots import figure_png

    data = base64.b64encode(figure_png(fig, FIGURE_DPI)).decode("ascii")
    fig.clear()
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
