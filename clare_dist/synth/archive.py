"""Writing the synthetic archive: NIH's layout, `images/PPPPPPPP_FFF.png` (or `.dcm`) and the CSV.

What to draw is a `SynthConfig`; `write_archive` draws the labels (`draws.py`), renders each
scan (`radiograph.py`) and writes it as PNG or as a DX DICOM file (`dicom.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..atomic import write_text_atomic
from ..cxr14 import DATA_ENTRY_HEADER, DATA_ENTRY_NAME
from ..labels import COMBINATIONS, NO_FINDING, combination_vector
from .dicom import LOSSY_SYNTAXES, TRANSFER_SYNTAXES, DXSubject, display_to_stored, dx_formats, encode_dx, study_times
from .draws import draw_combinations, draw_visits, patient_sizes
from .radiograph import render_scan, sample_anatomy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthConfig:
    """What to draw. `min_per_combination` guarantees that all 26 combinations occur.

    `transfer_syntax` (a key of `dicom.TRANSFER_SYNTAXES`) is how DICOM files are encoded.
    """

    n_images: int
    size: int = 256
    seed: int = 0
    dicom: bool = False
    min_per_combination: int = 2
    images_per_patient_mean: float = 3.0
    transfer_syntax: str = "explicit"

    def __post_init__(self) -> None:
        minimum = len(COMBINATIONS) * self.min_per_combination
        if self.min_per_combination < 0:
            raise ValueError(f"min_per_combination must be >= 0, got {self.min_per_combination}")
        if self.n_images < max(minimum, 1):
            raise ValueError(
                f"n_images={self.n_images} is too small: with min_per_combination={self.min_per_combination} "
                f"every one of the {len(COMBINATIONS)} combinations needs that many images, so the minimum "
                f"is {max(minimum, 1)}; raise n_images or lower min_per_combination"
            )
        if self.size < 32:
            raise ValueError(f"size must be at least 32 pixels to draw a chest, got {self.size}")
        if self.images_per_patient_mean < 1:
            raise ValueError(f"images_per_patient_mean must be >= 1, got {self.images_per_patient_mean}")
        if self.transfer_syntax not in TRANSFER_SYNTAXES:
            raise ValueError(
                f"unknown transfer_syntax {self.transfer_syntax!r}; choose one of {', '.join(TRANSFER_SYNTAXES)}"
            )
        if self.transfer_syntax != "explicit" and not self.dicom:
            raise ValueError(f"transfer_syntax={self.transfer_syntax!r} applies to DICOM output only; set dicom=True")


@dataclass(frozen=True)
class SynthArchive:
    """Where a written archive lies and what it holds."""

    root: Path
    data_entry_csv: Path
    image_dir: Path
    n_images: int
    combination_counts: dict[str, int]


def write_archive(
    out_dir: str | Path, config: SynthConfig, progress: Callable[[int, int], None] | None = None
) -> SynthArchive:
    """Draw `config.n_images` scans into `out_dir/images/` and their labels into `out_dir/Data_Entry_2017.csv`.

    Labels, anatomy and pixels each come from their own seeded stream, so the PNG and DICOM
    archives of one seed hold the same pictures. The CSV is written last, under its final name only
    once complete, so a half-written archive is never mistaken for a finished one.
    `progress(done, total)` is called after every image.
    """
    root = Path(out_dir)
    image_dir = root / "images"
    csv_path = root / DATA_ENTRY_NAME
    if csv_path.exists() or (image_dir.is_dir() and any(image_dir.iterdir())):
        raise FileExistsError(
            f"{root} already holds an archive; write into an empty or new directory, or delete it first"
        )
    image_dir.mkdir(parents=True, exist_ok=True)
    seed, n = config.seed, config.n_images
    labels_rng = np.random.default_rng([seed, 0])
    combos = draw_combinations(n, labels_rng, config.min_per_combination)
    sizes = patient_sizes(n, config.images_per_patient_mean, labels_rng)
    formats = dx_formats(n, np.random.default_rng([seed, 3])) if config.dicom else []
    ext = ".dcm" if config.dicom else ".png"
    log.info("writing %d synthetic scans of %d patients (%d px, %s) to %s", n, len(sizes), config.size, ext, root)

    rows = [DATA_ENTRY_HEADER]
    i = 0
    for patient, count in enumerate(sizes, start=1):
        anatomy = sample_anatomy(np.random.default_rng([seed, 1, patient]))
        sex = "M" if labels_rng.random() < 0.56 else "F"
        visits = draw_visits(combos[i : i + count], int(np.clip(labels_rng.normal(47, 17), 2, 90)), labels_rng)
        if config.dicom:
            birth, times = study_times([age for _, _, age in visits], np.random.default_rng([seed, 4, patient]))
        for follow_up, (findings, view, age) in enumerate(visits):
            spacing = 0.139 if view == "AP" else 0.143
            img = render_scan(
                combination_vector(combos[i]), config.size, np.random.default_rng([seed, 2, i]), anatomy, findings, view
            )
            name = f"{patient:08d}_{follow_up:03d}{ext}"
            if config.dicom:
                subject = DXSubject.synthetic(
                    ["clare-dist-synth", str(seed)], patient, follow_up, sex, birth, times[follow_up], view, spacing,
                    variant=config.transfer_syntax if config.transfer_syntax in LOSSY_SYNTAXES else "",
                )
                photometric, bits = formats[i]
                stored, window = display_to_stored(img, bits, photometric)
                data = encode_dx(stored, bits, photometric, config.transfer_syntax, window=window, subject=subject)
                (image_dir / name).write_bytes(data)
            else:
                Image.fromarray(np.round(img * 255).astype(np.uint8), "L").save(image_dir / name)
            labels = "|".join(findings) or NO_FINDING
            size = config.size
            rows.append(f"{name},{labels},{follow_up},{patient},{age},{sex},{view},{size},{size},{spacing},{spacing}")
            i += 1
            if progress is not None:
                progress(i, n)
            if i % max(1, n // 10) == 0:
                log.info("%d/%d scans written", i, n)

    write_text_atomic(csv_path, "\n".join(rows) + "\n")
    counts = {c: 0 for c in COMBINATIONS}
    for c in combos:
        counts[c] += 1
    return SynthArchive(root=root, data_entry_csv=csv_path, image_dir=image_dir, n_images=n, combination_counts=counts)
