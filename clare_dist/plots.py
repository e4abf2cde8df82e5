"""Pictures of the reference space, drawn the way the paper draws them (Fig. 3 and Fig. 5).

Uses matplotlib's object API (no pyplot state), so it is safe in worker processes and
servers without a display.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from clare_dist.labels import NO_FINDING
from clare_dist.rules import References

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
    """Draw the 26 references on `ax`: coloured dots for No Finding and single classes."""
    for name, (x, y) in zip(references.names, references.coords):
        if name in REFERENCE_COLOURS:
            ax.scatter([x], [y], s=70, color=REFERENCE_COLOURS[name], edgecolor="black", zorder=3, label=name)
        else:
            ax.scatter([x], [y], s=30, marker="x", color="black", zorder=3)
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


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out

