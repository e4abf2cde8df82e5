"""Pictures of the reference space and of an evaluation, drawn the way the paper draws them
(Fig. 3, 4 and 5), the baseline's ROC / PR curves, and one scan explained (Fig. 5 with Fig. 7).

Uses matplotlib's object API (no pyplot state), so it is safe in worker processes and
servers without a display.
"""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from clare_dist.labels import CLASSES, COMBINATION_INDEX, NO_FINDING
from clare_dist.ood import review_note
from clare_dist.rules import References, layout_check, self_inconsistent

if TYPE_CHECKING:
    from clare_dist.result import Screening

TITLE_PAD_PT = 6.0  # matplotlib's axes title pad: a thumbnail's title sits as far above it
# One colour per single class and No Finding; multi-label references are black crosses.
REFERENCE_COLOURS: dict[str, str] = {
    NO_FINDING: "#2ca02c",
    "Ca": "#d62728",
    "Pa": "#1f77b4",
    "Pn": "#9467bd",
    "Pl": "#ff7f0e",
    "Ot": "#8c564b",
}


def draw_reference_space(ax: Axes, references: References, highlight: str | None = None) -> None:
    """Draw the 26 references on `ax`: coloured dots for No Finding and single classes (one scatter
    each, for the legend), the multi-label ones as black crosses in one scatter."""
    crosses = []
    for name, (x, y) in zip(references.names, references.coords):
        if name in REFERENCE_COLOURS:
            ax.scatter([x], [y], s=70, color=REFERENCE_COLOURS[name], edgecolor="black", zorder=3, label=name)
        else:
            crosses.append((x, y))
    if crosses:
        ax.scatter(*np.asarray(crosses).T, s=30, marker="x", color="black", zorder=3)
    for name, (x, y) in zip(references.names, references.coords):
        colour = "red" if name == highlight else "black"
        ax.annotate(name, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7, color=colour, zorder=4)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_xlim(-0.05, 1.12)
    ax.set_ylim(-0.05, 1.08)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=7, framealpha=0.8)


def reference_space_figure(
    references: References,
    points: np.ndarray | None = None,
    title: str = "Reference space (Phase I label embeddings)",
) -> Figure:
    """The reference space, optionally with predicted points as red plus signs."""
    fig = Figure(figsize=(6.4, 6.0), dpi=120)
    ax = fig.add_subplot()
    draw_reference_space(ax, references)
    if points is not None and len(points):
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        ax.scatter(pts[:, 0], pts[:, 1], marker="+", s=90, color="red", zorder=5)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def reference_layout_figure(references: References) -> Figure:
    """references.png: the reference space under its layout check, each reference that R4 decides as
    another combination at its own point (wrong even for a perfect regressor) ringed in red, with
    what R4 decides there."""
    fig = reference_space_figure(references, title=f"Reference space (Phase I): {layout_check(references, listed=False)}")
    ax = fig.axes[0]
    for name, decided in self_inconsistent(references):
        x, y = references.coords[references.names.index(name)]
        ax.scatter([x], [y], s=240, facecolors="none", edgecolors="red", linewidths=1.5, zorder=6)
        ax.annotate(f"R4: {decided}", (x, y), xytext=(4, -10), textcoords="offset points", fontsize=6.5,
                    color="red", zorder=6)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def figure_png(fig: Figure, dpi: float | None = None) -> bytes:
    """The figure as PNG bytes, for answers and pages that carry the picture themselves."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def figure_rgb(fig: Figure) -> np.ndarray:
    """The figure's H×W×3 uint8 RGB pixels at its own dpi, the pixels `figure_png` would encode:
    for a picture that goes on as pixels (a Secondary Capture), encoding a PNG only to decode it
    again cost ~110 ms of a ~450 ms explanation picture."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def predictions_by_combination_figure(
    references: References,
    coords: np.ndarray,
    combinations: np.ndarray,
    max_points: int = 3000,
    seed: int = 0,
    columns: int = 6,
) -> Figure:
    """The paper's Fig. 4 for every combination present: one small panel per ground truth.

    Red dots are the predicted points of the images whose ground truth is the panel's
    combination, black crosses the 26 references, the panel's own reference a large red
    cross. Panels share axes (limits cover the references and the central 99% of the
    predictions, so a few outliers cannot shrink the space). A panel with more than
    `max_points` images shows a seeded random subsample, so the picture stays readable and
    quick for a full archive (its title still gives the full count).
    """
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    combinations = np.asarray(combinations, dtype=object)
    present = [name for name in references.names if (combinations == name).any()]
    rows = max(1, -(-len(present) // columns))
    fig = Figure(figsize=(2.3 * columns, 2.4 * rows), dpi=110)
    low = np.minimum(references.coords.min(axis=0), np.percentile(coords, 0.5, axis=0))
    high = np.maximum(references.coords.max(axis=0), np.percentile(coords, 99.5, axis=0))
    margin = 0.05 * (high - low)
    rng = np.random.default_rng(seed)
    for i, name in enumerate(present):
        ax = fig.add_subplot(rows, columns, i + 1)
        points = coords[combinations == name]
        shown = points if len(points) <= max_points else points[rng.choice(len(points), max_points, replace=False)]
        ax.scatter(shown[:, 0], shown[:, 1], s=3, color="red", alpha=float(np.clip(60 / np.sqrt(len(shown)), 0.08, 0.7)),
                   linewidths=0, zorder=2)
        ax.scatter(references.coords[:, 0], references.coords[:, 1], s=14, marker="x", color="black", linewidths=0.8,
                   zorder=3)
        own = references.coords[references.names.index(name)]
        ax.scatter([own[0]], [own[1]], s=90, marker="X", color="red", edgecolor="white", linewidths=1.2, zorder=4)
        ax.set_title(f"{name} (n={len(points):,})", fontsize=8)
        ax.set_xlim(low[0] - margin[0], high[0] + margin[0])
        ax.set_ylim(low[1] - margin[1], high[1] + margin[1])
        ax.tick_params(labelsize=6)
        ax.grid(True, alpha=0.3)
    height = fig.get_figheight()
    fig.suptitle("Test predictions per ground-truth combination (red dots); references (black x), "
                 "the panel's own reference (red X)", fontsize=9, y=1 - 0.1 / height)
    # Fixed margins: tight_layout would draw all panels once more just to measure them.
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.04, top=1 - 0.55 / height, wspace=0.25,
                        hspace=0.35)
    return fig


def roc_pr_figure(
    y_true: np.ndarray,
    y_score: np.ndarray,
    decision_bits: np.ndarray | None = None,
    decision_label: str = "R4",
    title: str = "",
) -> Figure:
    """The baseline's ROC and PR curves per class (AUC in the legend), side by side.

    `y_true` and `y_score` are N×5 in `labels.CLASSES` order. If `decision_bits` (N×5, 0/1)
    is given, each class also gets a diamond at that decision's (FPR, TPR) and (recall,
    precision): where the diamond lies above the PR curve, the rule beats every threshold
    of the baseline for that class (the paper's Table 4 in one picture). A class without
    positives or negatives has no curve and is marked so in the legend.
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=float)
    fig = Figure(figsize=(10.5, 6.2), dpi=110)
    roc_ax, pr_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for k, code in enumerate(CLASSES):
        y, s, colour = y_true[:, k], y_score[:, k], REFERENCE_COLOURS[code]
        positives = int(y.sum())
        if positives in (0, len(y)):
            roc_ax.plot([], [], color=colour, label=f"{code}: no curve (one class only)")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        precision, recall, _ = precision_recall_curve(y, s)
        roc_ax.plot(fpr, tpr, color=colour, lw=1.4, label=f"{code}  AUC {auc(fpr, tpr):.3f}")
        pr_ax.plot(recall, precision, color=colour, lw=1.4,
                   label=f"{code}  AUC {auc(recall, precision):.3f}  (prevalence {positives / len(y):.3f})")
        if decision_bits is not None:
            d = np.asarray(decision_bits)[:, k].astype(bool)
            tp, fp = int((d & (y == 1)).sum()), int((d & (y == 0)).sum())
            roc_ax.scatter([fp / (len(y) - positives)], [tp / positives], marker="D", s=36, color=colour,
                           edgecolor="black", zorder=4)
            pr_ax.scatter([tp / positives], [tp / (tp + fp) if tp + fp else 0.0], marker="D", s=36, color=colour,
                          edgecolor="black", zorder=4)
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    roc_ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    pr_ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall")
    if decision_bits is not None:
        for ax in (roc_ax, pr_ax):
            ax.scatter([], [], marker="D", s=36, color="white", edgecolor="black", label=f"{decision_label} (per class)")
    for ax in (roc_ax, pr_ax):
        ax.grid(True, alpha=0.3)
        ax.set_aspect("equal")
        # Below the axes: inside, a legend would hide curves or decision points.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.24, wspace=0.2)
    return fig


def explanation_figure(
    screening: Screening,
    references: References,
    case_images: Sequence[tuple[str, str, float, np.ndarray | None]],
    intended_use: str,
    scan_image: np.ndarray | None = None,
) -> Figure:
    """One scan explained, as a clinician would be shown it (the paper's Fig. 5 beside Fig. 7).

    Left, the scan itself (when `scan_image` is given); then the reference space with the
    scan's point (red plus), dashed lines to its top-3 references and the decision's reference
    ringed in red; right, up to nine similar known cases with case id, combination and
    distance; below, the top 3, the sentence, and in small print the intended use and the model
    version; a scan that needs human review says so in red above all. `case_images` holds (case id, combination, distance, uint8 image or None); None is
    drawn as "image not found", since a moved file must not hide the rest of the explanation.
    """
    widths = (0.55, 1.0, 1.0) if scan_image is not None else (1.0, 1.0)
    fig = Figure(figsize=(6.2 * sum(widths), 7.6), dpi=110)
    grid = fig.add_gridspec(1, len(widths), width_ratios=widths, left=0.035, right=0.985, top=0.87, bottom=0.25,
                            wspace=0.14)
    if scan_image is not None:
        scan_ax = fig.add_subplot(grid[0])
        _thumbnail(scan_ax, scan_image)
        scan_ax.set_title(f"The scan: {screening.scan_id}", fontsize=10)

    ax = fig.add_subplot(grid[-2])
    draw_reference_space(ax, references, highlight=screening.combination)
    point = np.array([screening.x, screening.y])
    for name in screening.top3:
        ref = references.coords[references.names.index(name)]
        ax.plot([point[0], ref[0]], [point[1], ref[1]], ls="--", lw=0.9, color="grey", zorder=2)
    if screening.combination in references.names:
        own = references.coords[references.names.index(screening.combination)]
        ax.scatter([own[0]], [own[1]], s=260, facecolor="none", edgecolor="red", linewidths=1.8, zorder=4)
    ax.scatter([point[0]], [point[1]], marker="+", s=260, linewidths=2.5, color="red", zorder=6)
    # The default limits frame the references; a point outside them must stay in view.
    ax.set_xlim(min(ax.get_xlim()[0], point[0] - 0.05), max(ax.get_xlim()[1], point[0] + 0.05))
    ax.set_ylim(min(ax.get_ylim()[0], point[1] - 0.05), max(ax.get_ylim()[1], point[1] + 0.05))
    ax.set_title("Reference space: the scan (red +), the decision ringed", fontsize=10)

    note = screening.similar_note or ("" if case_images else "no similar cases")
    panel = fig.add_subplot(grid[-1])
    panel.set_axis_off()
    if case_images:
        _case_thumbnails(panel, grid[-1].subgridspec(3, 3, wspace=0.05, hspace=0.3), case_images[:9])
    else:
        panel.text(0.5, 0.5, textwrap.fill(note, 50), ha="center", va="center", fontsize=10, transform=panel.transAxes)
    heading = f"Similar known cases with {screening.combination}, nearest first"
    if note and case_images:
        heading += f"\n({note})"
    box = grid[-1].get_position(fig)
    fig.text(box.x0 + box.width / 2, box.y1 + 0.055, heading, ha="center", va="bottom", fontsize=10)

    flagged = bool(screening.needs_review)
    fig.suptitle(f"{screening.scan_id}: {screening.combination}" + ("   (needs human review)" if flagged else ""),
                 fontsize=14, fontweight="bold", color="firebrick" if flagged else "black")
    if flagged:
        fig.text(0.035, 0.07, review_note(True, screening.ood_score) + ".", fontsize=10, color="firebrick",
                 va="top")
    top3 = ",   ".join(f"{name} ({d:.3f})" for name, d in zip(screening.top3, screening.top3_distances))
    fig.text(0.035, 0.17, f"Top 3 references (distance):   {top3}", fontsize=10.5, va="top")
    fig.text(0.035, 0.12, textwrap.fill(screening.explanation, int(12 * fig.get_figwidth())), fontsize=10, va="top")
    fig.text(0.035, 0.025, f"{intended_use.capitalize()}.   Model version {screening.model_version}.",
             fontsize=7.5, color="dimgrey")
    return fig


def _case_thumbnails(panel: Axes, cells, case_images: Sequence[tuple[str, str, float, np.ndarray | None]]) -> None:
    """The similar cases drawn in one axes, each thumbnail framed in its cell of `cells` (a 3×3
    grid) as an axes of its own would frame it: an axes costs ~10 ms to make, most of a
    Secondary Capture's drawing time once there are nine."""
    fig = panel.figure
    box = panel.get_position()
    panel.set_xlim(box.x0, box.x1)  # the panel's data coordinates are the figure's
    panel.set_ylim(box.y0, box.y1)
    width_in, height_in = fig.get_size_inches()
    title_pad = TITLE_PAD_PT / 72 / height_in
    for i, (case_id, combination, distance, image) in enumerate(case_images):
        cell = cells[i // 3, i % 3].get_position(fig)
        shown = np.full((1, 1), 217, np.uint8) if image is None else image  # a missing image: a light grey square
        rows, cols = shown.shape[:2]
        scale = min(cell.width * width_in / cols, cell.height * height_in / rows)  # inches a pixel, aspect kept
        w, h = cols * scale / width_in, rows * scale / height_in
        x0, y0 = cell.x0 + (cell.width - w) / 2, cell.y0 + (cell.height - h) / 2
        panel.imshow(shown, cmap="gray", vmin=0, vmax=255, extent=(x0, x0 + w, y0, y0 + h), aspect="auto")
        if image is None:
            panel.text(x0 + w / 2, y0 + h / 2, "image not found", ha="center", va="center", fontsize=9)
        panel.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor="black", linewidth=0.8, zorder=3, clip_on=False))
        panel.text(x0 + w / 2, y0 + h + title_pad, f"{case_id}\n{combination}   d = {distance:.3f}", ha="center",
                   va="bottom", fontsize=7.5)


def _thumbnail(ax: Axes, image: np.ndarray | None) -> None:
    """A grayscale image without ticks, or a square grey placeholder saying it is missing."""
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.imshow(np.full((1, 1), 0.85), cmap="gray", vmin=0, vmax=1)
        ax.text(0.5, 0.5, "image not found", ha="center", va="center", fontsize=9, transform=ax.transAxes)
    else:
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)


def archive_predictions_figure(
    references: References,
    coords: np.ndarray,
    combinations: Sequence[str],
    max_points: int = 20_000,
    seed: int = 0,
) -> Figure:
    """Every screened scan of an archive on the reference space, coloured by its decision.

    One picture of where a whole backlog landed: the 26 references as `draw_reference_space`
    draws them, and each scan's point in its predicted combination's colour (legend outside,
    canonical order, combinations outside the 26 last). More than `max_points` points are drawn
    as a seeded uniform subsample (the title says so), so the figure stays quick and readable
    for a full archive. The axes grow to include every drawn point.
    """
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    combinations = np.asarray(combinations, dtype=object)
    total = len(coords)
    if total > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(total, max_points, replace=False))
        coords, combinations = coords[keep], combinations[keep]
    fig = Figure(figsize=(9.0, 6.4), dpi=110)
    ax = fig.add_subplot()
    draw_reference_space(ax, references)
    reference_legend = ax.get_legend()
    present = sorted(set(combinations), key=lambda name: (COMBINATION_INDEX.get(name, len(COMBINATION_INDEX)), name))
    palette = list(colormaps["tab20"].colors) + list(colormaps["tab20b"].colors)
    alpha = float(np.clip(40 / np.sqrt(max(len(coords), 1)), 0.15, 0.8))
    handles = []
    for i, name in enumerate(present):
        points, colour = coords[combinations == name], palette[i % len(palette)]
        ax.scatter(points[:, 0], points[:, 1], s=8, color=colour, alpha=alpha, linewidths=0, zorder=2)
        handles.append(Line2D([], [], ls="", marker="o", markersize=5, color=colour, label=name))  # opaque in the legend
    if len(coords):
        low, high = coords.min(axis=0), coords.max(axis=0)
        ax.set_xlim(min(ax.get_xlim()[0], low[0] - 0.05), max(ax.get_xlim()[1], high[0] + 0.05))
        ax.set_ylim(min(ax.get_ylim()[0], low[1] - 0.05), max(ax.get_ylim()[1], high[1] + 0.05))
    if handles:
        ax.legend(handles=handles, title="Predicted", loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
                  title_fontsize=8, ncol=1 + len(handles) // 16)
        ax.add_artist(reference_legend)  # a second legend() replaces the first; keep the references'
    shown = f"{len(coords):,} of {total:,} scans, a seeded sample" if len(coords) < total else f"{total:,} scans"
    ax.set_title(f"Predicted points on the reference space ({shown})", fontsize=10)
    fig.tight_layout()
    return fig

