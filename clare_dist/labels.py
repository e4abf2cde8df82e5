"""The label space of CLARE-XR: 14 CXR14 findings grouped into 5 classes, 26 combinations.

Every layer (metadata, references, rules, metrics, batch rows, API answers) speaks in these
names, so they are defined once here. A combination is named by its class codes in vector
order ("CaPnPl"); the empty one is "No Finding".
"""

from __future__ import annotations

from itertools import combinations as _subsets
from typing import Iterable, Sequence

import numpy as np

from clare_dist.errors import ClareError

CLASSES: tuple[str, ...] = ("Ca", "Pa", "Pn", "Pl", "Ot")
NO_FINDING = "No Finding"
MAX_FINDINGS = 3

FINDING_TO_CLASS: dict[str, str] = {
    "Cardiomegaly": "Ca",
    "Infiltration": "Pa",
    "Fibrosis": "Pa",
    "Atelectasis": "Pa",
    "Mass": "Pa",
    "Nodule": "Pa",
    "Pneumonia": "Pa",
    "Consolidation": "Pa",
    "Edema": "Pa",
    "Pneumothorax": "Pn",
    "Effusion": "Pl",
    "Pleural_Thickening": "Pl",
    "Hernia": "Ot",
    "Emphysema": "Ot",
}
FINDINGS: tuple[str, ...] = tuple(FINDING_TO_CLASS)

CLASS_FINDINGS: dict[str, tuple[str, ...]] = {
    code: tuple(f for f, c in FINDING_TO_CLASS.items() if c == code) for code in CLASSES
}

# Words used in explanation sentences ("findings associated with cardiac and pleural lesions").
CLASS_ADJECTIVES: dict[str, str] = {
    "Ca": "cardiac",
    "Pa": "parenchymal",
    "Pl": "pleural",
    "Ot": "other",
}
CLASS_NOUNS: dict[str, str] = {"Pn": "pneumothorax"}


class LabelError(ClareError, ValueError):
    """A label string or combination name that is not part of the CXR14 / CLARE-XR label space."""


def combination_name(vector: Sequence[int] | np.ndarray) -> str:
    """Name of any 5-bit class vector, including ones outside the 26 (e.g. R2's 'CaPnPlOt')."""
    bits = [int(b) for b in vector]
    if len(bits) != len(CLASSES) or any(b not in (0, 1) for b in bits):
        raise LabelError(f"a class vector has 5 entries of 0 or 1 in the order {CLASSES}; got {list(vector)}")
    name = "".join(code for code, bit in zip(CLASSES, bits) if bit)
    return name or NO_FINDING


def combination_vector(name: str) -> np.ndarray:
    """5-bit vector (int8, order Ca, Pa, Pn, Pl, Ot) of a combination name; codes may come in any order."""
    if name == NO_FINDING:
        return np.zeros(len(CLASSES), dtype=np.int8)
    if len(name) % 2 or not name:
        raise LabelError(f"{name!r} is not a combination name: expected class codes from {CLASSES} or {NO_FINDING!r}")
    codes = [name[i : i + 2] for i in range(0, len(name), 2)]
    unknown = [c for c in codes if c not in CLASSES]
    if unknown or len(set(codes)) != len(codes):
        raise LabelError(f"{name!r} is not a combination name: expected distinct class codes from {CLASSES}")
    return np.array([int(c in codes) for c in CLASSES], dtype=np.int8)


def _canonical_combinations() -> tuple[str, ...]:
    names = [NO_FINDING]
    for size in range(1, MAX_FINDINGS + 1):
        for subset in _subsets(range(len(CLASSES)), size):
            names.append("".join(CLASSES[i] for i in subset))
    return tuple(names)


# The canonical order: No Finding, then by number of classes, then by class order.
COMBINATIONS: tuple[str, ...] = _canonical_combinations()
COMBINATION_INDEX: dict[str, int] = {name: i for i, name in enumerate(COMBINATIONS)}
COMBINATION_VECTORS: np.ndarray = np.stack([combination_vector(n) for n in COMBINATIONS])

# The paper's Table 1: images per combination in the CXR14 subset with at most 3 findings.
TABLE1_COUNTS: dict[str, int] = {
    "No Finding": 60361, "Pa": 28440, "PaPl": 7148, "Pl": 5332, "Pn": 2194, "PaPn": 1225,
    "Ca": 1093, "Ot": 1003, "PaOt": 576, "CaPl": 532, "CaPa": 527, "PnPl": 516, "PnOt": 339,
    "PaPnPl": 333, "CaPaPl": 289, "PaPnOt": 200, "PlOt": 164, "PaPlOt": 100, "PnPlOt": 60,
    "CaOt": 21, "CaPlOt": 11, "CaPn": 9, "CaPaPn": 6, "CaPnPl": 3, "CaPnOt": 2, "CaPaOt": 2,
}


def combination_classes(name: str) -> list[str]:
    """Class codes of a combination, in vector order ([] for No Finding)."""
    return [c for c, bit in zip(CLASSES, combination_vector(name)) if bit]


def parse_finding_labels(text: str) -> tuple[str, ...]:
    """Findings of a CXR14 `Finding Labels` cell ("Effusion|Mass"); () for 'No Finding'.

    Order in the file is not reliable (51 rows of the full file are not alphabetical), so the
    result is sorted alphabetically, the order NIH uses elsewhere.
    """
    parts = [p.strip() for p in str(text).split("|") if p.strip()]
    if parts == [NO_FINDING]:
        return ()
    if not parts:
        raise LabelError("empty 'Finding Labels' cell: expected findings joined with '|' or 'No Finding'")
    unknown = sorted(set(parts) - set(FINDINGS))
    if unknown:
        raise LabelError(f"unknown finding(s) {unknown} in {text!r}; known findings are {list(FINDINGS)} and 'No Finding'")
    return tuple(sorted(set(parts)))


def findings_vector(findings: Iterable[str]) -> np.ndarray:
    """5-bit class vector of a set of the 14 findings."""
    present = {FINDING_TO_CLASS[f] for f in findings}
    return np.array([int(c in present) for c in CLASSES], dtype=np.int8)


def describe_classes(codes: Sequence[str]) -> str:
    """Plain-language phrase for class codes: ['Ca', 'Pl'] -> 'cardiac and pleural lesions'."""
    adjectives = [CLASS_ADJECTIVES[c] for c in CLASSES if c in codes and c in CLASS_ADJECTIVES]
    nouns = [CLASS_NOUNS[c] for c in CLASSES if c in codes and c in CLASS_NOUNS]
    parts = []
    if adjectives:
        parts.append(_join(adjectives) + " lesions")
    parts.extend(nouns)
    return _join(parts)


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]
