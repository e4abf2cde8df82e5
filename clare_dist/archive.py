"""Which files of an archive folder are scans, and finding a label table's scans among them.

Sites store scans under many layouts (flat, `images/`, NIH's `images_001/images/`) and name them
by suffix; the decoder decides the format from the content, so the suffixes here only pick the
files worth reading. Training, the export's check images and the batch job's listing share them.
Nothing here needs torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from clare_dist.errors import ClareError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


class MissingImagesError(ClareError, FileNotFoundError):
    """Label rows whose scan file is not under the image root."""


def index_images(root: str | os.PathLike) -> dict[str, Path]:
    """File name → path for every scan under `root` (flat, `images/`, or NIH's `images_001/images/`)."""
    base = Path(root)
    if not base.is_dir():
        raise NotADirectoryError(f"image root {base} is not a directory")
    found: dict[str, Path] = {}
    for dirpath, _, files in os.walk(base):
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES):
                found.setdefault(name, Path(dirpath) / name)
    return found


def locate(names: Iterable[str], index: dict[str, Path], root: str | os.PathLike) -> list[Path]:
    """Paths of `names`, or MissingImagesError naming how many and which are missing."""
    names = list(names)
    missing = [n for n in names if n not in index]
    if missing:
        raise MissingImagesError(
            f"{len(missing)} of {len(names)} scans in the label table are not under {root} "
            f"(e.g. {missing[:3]}); point --images at the folder that holds them"
        )
    return [index[n] for n in names]
