"""The reference space: the label autoencoder trained, its 26 references written and drawn."""

from __future__ import annotations

from pathlib import Path


def make_references(out: Path, seed: int = 0):
    """Train the label autoencoder and write references.json, its weights and references.png;
    returns the trained space (references, minimum distance, reconstruction error, seed used, the
    layout check)."""
    from clare_dist.plots import reference_layout_figure, save_figure
    from clare_dist.references import AutoencoderConfig, build_references, save_references

    space = build_references(AutoencoderConfig(seed=seed))
    save_references(space, out)
    save_figure(reference_layout_figure(space.references), Path(out) / "references.png")
    return space
