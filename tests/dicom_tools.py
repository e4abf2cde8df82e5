"""The DICOM validator the tests run on every DICOM the project writes (Debian's dicom3tools)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def dciodvfy(path: Path) -> tuple[list[str], set[str], str]:
    """The Error lines, the distinct Warning lines and all dciodvfy printed for a file."""
    exe = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
    if not Path(exe).exists():
        pytest.fail("dciodvfy is missing: apt-get install dicom3tools (.ci/run installs it)")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in (run.stdout + run.stderr).splitlines()]
    return [x for x in lines if x.startswith("Error")], {x for x in lines if x.startswith("Warning")}, "\n".join(lines)
