"""The case index on disk: `cases.parquet`, one tree order per partition, and `index.json`.

    index.json       format version, structure, leaf size, cases, and per partition its file
    cases.parquet    the case table (`table.COLUMNS`)
    all.npy          the partition of every case in its k-d tree's leaf order; cNN.npy combination NN's

The trees are rebuilt on load from the table and the saved orders (about a second per 10M
points here); the order keeps a leaf's points together in memory, which is what keeps the tail
of single queries short. An index of format 1 (the FAISS lattice, before the k-d tree) is read
from its case table alone, with the same answers, since an exact search does not depend on the
structure; any other format is refused. Loading checks every file against the others and names
every inconsistency at once, since a half-copied index would otherwise answer with the wrong
cases. In a bundle the index lives in `index/`, which `clare_dist.bundle.install_index` swaps in
and records in the manifest.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy

from clare_dist.bundle import install_index
from clare_dist.case_index.search import LEAF_SIZE, Partition
from clare_dist.case_index.table import ALL_CASES, CaseIndexError, coordinates, partition_rows, validated
from clare_dist.labels import COMBINATION_INDEX

if TYPE_CHECKING:
    from clare_dist.case_index.index import CaseIndex

log = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 2
FAISS_LATTICE_FORMAT = 1  # read from its case table; its .faiss files are not needed
STRUCTURE = "k-d tree (scipy.spatial.cKDTree), points in leaf order"
CASES_FILE = "cases.parquet"
META_FILE = "index.json"


def write_index(directory: str | os.PathLike, table: pd.DataFrame, partitions: dict[str, Partition]) -> Path:
    """Write the table, each partition's tree order and their description into `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / CASES_FILE, index=False)
    entries = []
    for name, partition in partitions.items():
        file = f"{ALL_CASES if name == ALL_CASES else f'c{COMBINATION_INDEX[name]:02d}'}.npy"
        np.save(out / file, partition.order, allow_pickle=False)
        entries.append({"combination": name, "cases": len(partition), "file": file, "leaf_size": partition.leaf_size})
    meta = {"format_version": INDEX_FORMAT_VERSION, "structure": STRUCTURE, "scipy_version": scipy.__version__,
            "cases": len(table), "partitions": entries}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("saved the case index (%d cases) to %s", len(table), out)
    return out


def read_index(directory: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Partition]]:
    """The table and partitions that `write_index` wrote; every inconsistency is named in one CaseIndexError."""
    root = Path(directory)

    def unusable(problems: list[str]) -> CaseIndexError:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        return CaseIndexError(
            f"the case index at {root} is not usable:\n{listed}\n"
            "Rebuild it from the labelled archive (clare-dist embed --labels ... --build-index)."
        )

    missing = [f"{name} is missing" for name in (META_FILE, CASES_FILE) if not (root / name).is_file()]
    if missing:
        raise unusable(missing)
    try:
        meta = json.loads((root / META_FILE).read_text())
        table = validated(pd.read_parquet(root / CASES_FILE))
    except (ValueError, OSError) as err:  # JSONDecodeError, pyarrow's errors and ours are ValueErrors
        raise unusable([str(err)]) from None
    version = meta.get("format_version")
    if version not in (INDEX_FORMAT_VERSION, FAISS_LATTICE_FORMAT):
        raise unusable([f"{META_FILE} has format_version {version!r}; this clare-dist reads "
                        f"{FAISS_LATTICE_FORMAT} and {INDEX_FORMAT_VERSION}"])
    expected = partition_rows(table)
    listed = {entry.get("combination"): entry for entry in meta.get("partitions", [])}
    problems = []
    if meta.get("cases") != len(table):
        problems.append(f"{META_FILE} says {meta.get('cases')} cases but {CASES_FILE} has {len(table)} rows")
    if set(listed) != set(expected):
        problems.append(f"{META_FILE} lists the partitions {sorted(map(str, listed))} but {CASES_FILE} has {sorted(expected)}")
    if problems:
        raise unusable(problems)

    xy = coordinates(table)
    if version == FAISS_LATTICE_FORMAT:
        log.info("the case index at %s has format 1 (FAISS lattice): its k-d trees are built from %s; "
                 "saving it again (or rebuilding it) makes loading faster", root, CASES_FILE)
        return table, {name: Partition.build(rows, xy) for name, rows in expected.items()}
    partitions = {}
    for name, rows in expected.items():
        entry, file = listed[name], root / str(listed[name].get("file"))
        if entry.get("cases") != len(rows):
            problems.append(f"{META_FILE} says {entry.get('cases')} cases but {CASES_FILE} has {len(rows)} for partition {name}")
            continue
        if not file.is_file():
            problems.append(f"{file.name} (partition {name}) is missing")
            continue
        try:
            order = np.load(file, allow_pickle=False)
        except (ValueError, OSError) as err:
            problems.append(f"{file.name} (partition {name}) cannot be read: {err}")
            continue
        if not _is_permutation(order, len(rows)):
            problems.append(f"{file.name} is not an order of the {len(rows)} cases of partition {name}")
            continue
        leaf_size = entry.get("leaf_size", LEAF_SIZE)
        if not isinstance(leaf_size, int) or leaf_size < 1:
            problems.append(f"{META_FILE} has no usable leaf_size for partition {name}: {leaf_size!r}")
            continue
        partitions[name] = Partition(rows, xy, order, leaf_size)
    if problems:
        raise unusable(problems)
    log.info("loaded the case index (%d cases) from %s", len(table), root)
    return table, partitions


def _is_permutation(order: np.ndarray, n: int) -> bool:
    """Whether `order` lists each of 0..n-1 exactly once."""
    if order.shape != (n,) or not np.issubdtype(order.dtype, np.integer):
        return False
    if n == 0:
        return True
    if order.min() < 0 or order.max() >= n:
        return False
    seen = np.zeros(n, dtype=bool)
    seen[order] = True
    return bool(seen.all())


def write_index_into_bundle(bundle_path: str | os.PathLike, index: CaseIndex) -> Path:
    """Put the index into a valid bundle (`index/`) and have the bundle record it; model_version is untouched."""
    target = install_index(bundle_path, index.save, {
        "cases": len(index),
        "combinations": index.combinations,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "format_version": INDEX_FORMAT_VERSION,
    })
    log.info("wrote the case index (%d cases) into the bundle %s", len(index), target.parent)
    return target
