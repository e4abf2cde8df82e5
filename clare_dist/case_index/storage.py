"""The case index on disk: `cases.parquet`, one FAISS file per partition, and `index.json`.

    index.json       format version, FAISS version, cases, and per partition its file and lattice
    cases.parquet    the case table (`table.COLUMNS`)
    all.faiss        the partition of every case; cNN.faiss the partition of combination NN

Loading checks every file against the others and names every inconsistency at once, since a
half-copied index would otherwise answer with the wrong cases. In a bundle the index lives in
`index/`, which `clare_dist.bundle.install_index` swaps in and records in the manifest.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import pandas as pd

from clare_dist.bundle import install_index
from clare_dist.case_index.grid import Grid
from clare_dist.case_index.search import Partition
from clare_dist.case_index.table import ALL_CASES, CaseIndexError, coordinates, partition_rows, validated
from clare_dist.labels import COMBINATION_INDEX

if TYPE_CHECKING:
    from clare_dist.case_index.index import CaseIndex

log = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
CASES_FILE = "cases.parquet"
META_FILE = "index.json"


def write_index(directory: str | os.PathLike, table: pd.DataFrame, partitions: dict[str, Partition]) -> Path:
    """Write the table, each partition's CPU index and their description into `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / CASES_FILE, index=False)
    entries = []
    for name, partition in partitions.items():
        file = f"{ALL_CASES if name == ALL_CASES else f'c{COMBINATION_INDEX[name]:02d}'}.faiss"
        faiss.write_index(partition.ivf, str(out / file))  # always the CPU copy
        entries.append({"combination": name, "cases": len(partition), "file": file, "grid": partition.grid.to_json()})
    meta = {"format_version": INDEX_FORMAT_VERSION, "faiss_version": faiss.__version__, "cases": len(table), "partitions": entries}
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
    if meta.get("format_version") != INDEX_FORMAT_VERSION:
        raise unusable([f"{META_FILE} has format_version {meta.get('format_version')!r}; this clare-dist reads {INDEX_FORMAT_VERSION}"])
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
    partitions = {}
    for name, rows in expected.items():
        entry, file = listed[name], root / str(listed[name].get("file"))
        if not file.is_file():
            problems.append(f"{file.name} (partition {name}) is missing")
            continue
        try:
            index = faiss.read_index(str(file))
        except RuntimeError as err:
            problems.append(f"{file.name} (partition {name}) cannot be read: {str(err).splitlines()[0]}")
            continue
        try:
            grid = Grid(**entry["grid"])
        except (KeyError, TypeError):
            problems.append(f"{META_FILE} has no usable grid for partition {name}")
            continue
        if index.ntotal != len(rows) or entry.get("cases") != len(rows):
            problems.append(
                f"{file.name} holds {index.ntotal} cases and {META_FILE} says {entry.get('cases')}, but "
                f"{CASES_FILE} has {len(rows)} for partition {name}"
            )
        elif not (isinstance(index, faiss.IndexIVFFlat) and index.nlist == grid.nlist):
            problems.append(f"{file.name} is not the {grid.nlist}-cell grid index that {META_FILE} describes")
        else:
            partitions[name] = Partition(rows, xy, grid, index)
    if problems:
        raise unusable(problems)
    log.info("loaded the case index (%d cases) from %s", len(table), root)
    return table, partitions


def write_index_into_bundle(bundle_path: str | os.PathLike, index: CaseIndex) -> Path:
    """Put the index into a valid bundle (`index/`) and have the bundle record it; model_version is untouched."""
    target = install_index(bundle_path, index.save, {
        "cases": len(index),
        "combinations": index.combinations,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "faiss_version": faiss.__version__,
    })
    log.info("wrote the case index (%d cases) into the bundle %s", len(index), target.parent)
    return target
