"""Files and folders that appear whole or not at all.

Every long step (training, export, indexing, a night of screening) may be interrupted, and the
next run trusts what it finds: a checkpoint, a bundle, a report. So each is written under a
temporary name beside its place and renamed onto it only when complete; a crash leaves the old
version or none, never half of one. One helper, so the rule is kept the same way everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `path` for the block to write (a file, or a folder it creates);
    renamed onto `path` when the block ends without an error, removed when it raises. A folder
    replaces the folder already there: the old one is moved aside first, then deleted."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = target.with_name(f".{target.name}.tmp-{tag}")
    old = target.with_name(f".{target.name}.old-{tag}")
    try:
        yield tmp
        if tmp.is_dir() and target.is_dir():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, old):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, document: Any) -> Path:
    """`document` as indented JSON with a final newline (what every JSON file clare-dist writes looks like)."""
    return write_text_atomic(path, json.dumps(document, indent=2) + "\n")
