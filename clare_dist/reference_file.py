"""references.json: the 26 reference coordinates as training, batch jobs and serving read them.

Phase I (`clare_dist.references`) trains the label autoencoder with torch; everything after it
only reads the coordinates it produced. This module reads and writes that file without torch,
so loading a model bundle (which holds a copy) never imports the training stack.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from clare_dist.atomic import write_json_atomic
from clare_dist.labels import COMBINATIONS, NO_FINDING
from clare_dist.rules import References

REFERENCES_FILE = "references.json"
FORMAT_VERSION = 1


def write_references(out_dir: str | os.PathLike, references: References, evidence: dict[str, Any]) -> Path:
    """Write references.json into `out_dir`: the coordinates, plus `evidence` of how they were made
    (seed, distances, training settings), kept for whoever audits the coordinate system."""
    document = {"format_version": FORMAT_VERSION, "order": list(COMBINATIONS), "references": references.to_mapping(),
                **evidence}
    return write_json_atomic(Path(out_dir) / REFERENCES_FILE, document)


def load_references(path: str | os.PathLike) -> References:
    """Read references.json (or a directory holding it) and check it."""
    file = Path(path)
    if file.is_dir():
        file = file / REFERENCES_FILE
    try:
        document = json.loads(file.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no references at {file}; create them with `clare-dist references --out DIR`") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not valid JSON ({exc}); recreate it with `clare-dist references`") from exc
    if document.get("format_version") != FORMAT_VERSION or "references" not in document:
        raise ValueError(f"{file} is not a clare-dist references file of format version {FORMAT_VERSION}")
    references = References.from_mapping(document["references"])
    if NO_FINDING not in references.names:
        raise ValueError(f"{file} has no {NO_FINDING!r} reference")
    return references
