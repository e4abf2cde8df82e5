"""The embedded default data set: a synthetic archive in the NIH layout, with progress logged."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def synthesize(out: Path, n_images: int, size: int, seed: int, dicom: bool, transfer_syntax: str = "explicit"):
    """Draw the archive into `out` (see clare_dist.synth); logs every tenth of the way."""
    from clare_dist.synth import SynthConfig, write_archive

    step = max(1, n_images // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            log.info("synth: %d/%d images", done, total)

    config = SynthConfig(n_images=n_images, size=size, seed=seed, dicom=dicom, transfer_syntax=transfer_syntax)
    return write_archive(out, config, progress=progress)
