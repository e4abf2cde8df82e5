"""A decoded-scan cache: re-screening an archive with a new model skips decoding it again.

Decoding and resizing is most of a scan's cost (a 1024² PNG 10-15 ms, a 12-bit DX more), and a
new model with the same input needs exactly the same arrays. An entry is one scan's model input
(size × size uint8) under a key made of its file's content (SHA-256 of the bytes, which CPUs hash in hardware) and the
preprocessing that made it (id and size): a file changed in place misses, a moved or renamed
one hits, and a bundle with another preprocessing or input size never reads another's entries.
The file is still read and hashed (~0.6 ms a MB), which is what keeps a stale entry from ever
being used.

One `.npy` file per entry under `root/<preprocessing>-<size>/`, written to a temporary name and
renamed, so concurrent tasks and a killed run leave only whole entries. An entry that does not
read back as the expected array is logged, decoded again and replaced. Only scans that decoded
are kept: a failure is decided again (it costs little, and the file may have been fixed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clare_dist.scans import DEFAULT_PREPROCESSING, ScanConfig, ScanSource, preprocess_scan
from clare_dist.scans.files import load_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanCache:
    """The cache folder (made on first write)."""

    root: Path

    def folder(self, config: ScanConfig) -> Path:
        """Where the entries of one preprocessing and input size live."""
        chosen = (config.preprocessing or DEFAULT_PREPROCESSING).replace("/", "-")
        return Path(self.root) / f"{chosen}-{config.size}"

    def entry(self, data: bytes, config: ScanConfig) -> Path:
        key = hashlib.sha256(data).hexdigest()[:40]
        return self.folder(config) / key[:2] / f"{key}.npy"

    def read(self, entry: Path, size: int) -> np.ndarray | None:
        """The cached array, or None where there is none or it is not a size × size uint8 array."""
        try:
            scan = np.load(entry, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as err:
            log.warning("ignoring a damaged scan cache entry %s (%s); the scan is decoded again", entry.name, err)
            return None
        if scan.dtype != np.uint8 or scan.shape != (size, size):
            log.warning("ignoring scan cache entry %s: %s %s, not %dx%d uint8; the scan is decoded again",
                        entry.name, scan.dtype, scan.shape, size, size)
            return None
        return scan

    def write(self, entry: Path, scan: np.ndarray) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        partial = entry.with_name(f".{entry.stem}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with partial.open("wb") as out:
                np.save(out, np.ascontiguousarray(scan), allow_pickle=False)
            os.replace(partial, entry)
        finally:
            partial.unlink(missing_ok=True)

    def entries(self, config: ScanConfig) -> int:
        """How many entries one preprocessing and size has (for the job's log)."""
        folder = self.folder(config)
        return sum(1 for _ in folder.glob("*/*.npy")) if folder.is_dir() else 0


def preprocess_cached(source: ScanSource, config: ScanConfig, cache: ScanCache) -> tuple[np.ndarray, bool]:
    """`preprocess_scan` through the cache: the model's input and whether it came from the cache.
    The same limits and errors as `preprocess_scan` (the file is read under them first)."""
    data = load_bytes(source, config.max_file_bytes)
    entry = cache.entry(data, config)
    cached = cache.read(entry, config.size)
    if cached is not None:
        return cached, True
    scan = preprocess_scan(data, config)
    try:
        cache.write(entry, scan)
    except OSError as err:  # a full or read-only cache costs the cache, never the scan
        log.warning("could not write the scan cache entry %s (%s); screening goes on without it", entry.name, err)
    return scan, False
