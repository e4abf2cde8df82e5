"""Broken files for a synthetic backlog: what a real archive holds by mistake beside its scans."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image


def write_broken_scans(directory: str | os.PathLike) -> list[Path]:
    """A few files of the kinds a real backlog holds by mistake, for the demo's screening run.

    Each must come out of a batch run as a row with status=error and its reason, not stop it.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    whole = buffer.getvalue()
    files = {
        "99990001_000.png": b"",
        "99990002_000.png": whole[: len(whole) // 2],
        "99990003_000.png": b"transfer log: 12 files sent\n",
        "99990004_000.dcm": b"\0" * 128 + b"DICM" + b"\0" * 64,
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    return [out / name for name in files]
