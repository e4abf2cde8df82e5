"""Phase III: from a predicted 2-D point to a multi-label decision, by distance to the references.

Vectorised over N points, because the batch job classifies whole archives and the API
classifies one scan with the same code. The four rule sets are the paper's; R4 is the one
the product uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from clare_dist.labels import (
    CLASSES,
    COMBINATIONS,
    NO_FINDING,
    LabelError,
    combination_name,
    combination_vector,
)

RULES: tuple[str, ...] = ("r1", "r2", "r3", "r4")
DECISION_RULE = "r4"

# Name of every 5-bit pattern, indexed by the pattern read as a binary number (Ca is the high bit).
_PATTERN_NAMES = np.array(
    [combination_name([(p >> (len(CLASSES) - 1 - i)) & 1 for i in range(len(CLASSES))]) for p in range(2 ** len(CLASSES))],
    dtype=object,
)
_PATTERN_WEIGHTS = 2 ** np.arange(len(CLASSES) - 1, -1, -1)


@dataclass(frozen=True)
class References:
    """The 26 reference coordinates, in the canonical combination order."""

    names: tuple[str, ...]
    coords: np.ndarray

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Sequence[float]]) -> "References":
        """Build from {combination: (x, y)}; every one of the 26 combinations must be present."""
        unknown = sorted(set(mapping) - set(COMBINATIONS))
        missing = [name for name in COMBINATIONS if name not in mapping]
        if unknown or missing:
            raise LabelError(f"references need exactly the 26 combinations; missing {missing}, unknown {unknown}")
        coords = np.array([[float(v) for v in mapping[name]] for name in COMBINATIONS], dtype=np.float64)
        if coords.shape != (len(COMBINATIONS), 2) or not np.isfinite(coords).all():
            raise ValueError("each reference must be a finite (x, y) pair")
        coords.setflags(write=False)
        return cls(names=COMBINATIONS, coords=coords)

    def to_mapping(self) -> dict[str, list[float]]:
        return {name: [float(x), float(y)] for name, (x, y) in zip(self.names, self.coords)}

    @property
    def vectors(self) -> np.ndarray:
        """5-bit class vectors of the references, row-aligned with `coords`."""
        return np.stack([combination_vector(name) for name in self.names])

    def min_pairwise_distance(self) -> float:
        diff = self.coords[:, None, :] - self.coords[None, :, :]
        dist = np.sqrt((diff**2).sum(-1))
        return float(dist[np.triu_indices(len(self.names), k=1)].min())


@dataclass(frozen=True)
class RuleResult:
    """Decisions for N points. `top3`/`distances` already skip No Finding in 2nd/3rd place."""

    top3: np.ndarray
    distances: np.ndarray
    r1: np.ndarray
    r2: np.ndarray
    r3: np.ndarray
    r4: np.ndarray
    bits: Mapping[str, np.ndarray]

    @property
    def decision(self) -> np.ndarray:
        return getattr(self, DECISION_RULE)


def pattern_names(bits: np.ndarray) -> np.ndarray:
    """Combination names of N×5 0/1 rows, vectorised (names outside the 26 included)."""
    return _PATTERN_NAMES[np.asarray(bits, dtype=np.int64) @ _PATTERN_WEIGHTS]


def apply_rules(coords: np.ndarray, references: References) -> RuleResult:
    """The paper's rule sets R1–R4 for N predicted points (N × 2)."""
    points = np.asarray(coords, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"coords must be an N x 2 array of (x, y) points; got shape {points.shape}")
    n = len(points)
    dist = np.sqrt(((points[:, None, :] - references.coords[None, :, :]) ** 2).sum(-1))
    order = np.argsort(dist, axis=1, kind="stable")

    no_finding = references.names.index(NO_FINDING)
    following = order[:, 1:4]
    keep = following != no_finding
    keep[keep.all(axis=1), 2] = False
    top3_index = np.concatenate([order[:, :1], following[keep].reshape(n, 2)], axis=1)

    vectors = references.vectors.astype(bool)
    top3_vectors = vectors[top3_index]
    closest = top3_vectors[:, 0]
    recurrent = top3_vectors.sum(axis=1) >= 2
    bits = {"r1": closest, "r2": top3_vectors.any(axis=1), "r3": recurrent, "r4": closest | recurrent}
    normal = top3_index[:, 0] == no_finding
    bits = {rule: np.where(normal[:, None], False, b).astype(np.int8) for rule, b in bits.items()}

    names = np.array(references.names, dtype=object)
    return RuleResult(
        top3=names[top3_index],
        distances=np.take_along_axis(dist, top3_index, axis=1),
        bits=bits,
        **{rule: pattern_names(b) for rule, b in bits.items()},
    )


def self_inconsistent(references: References) -> list[tuple[str, str]]:
    """(reference, what R4 decides at its own point) for every reference R4 gets wrong there.

    A perfect regressor puts each scan on its combination's reference; where R4 decides another
    combination at that very point (its two nearest neighbours share a class it lacks), even that
    regressor is wrong. An empty list is a layout a perfect regressor would decode right.
    """
    decided = apply_rules(references.coords, references).r4
    return [(name, str(d)) for name, d in zip(references.names, decided) if name != d]


def layout_check(references: References, listed: bool = True) -> str:
    """The layout check in one line, as references.png, the reports and the evaluation state it:
    "R4 decodes 26/26 references correctly" and, `listed`, where and what it decides wrong."""
    wrong = self_inconsistent(references)
    total = len(references.names)
    line = f"R4 decodes {total - len(wrong)}/{total} references correctly"
    if not listed:
        return line
    line += " at their own point"
    return line if not wrong else f"{line}; wrong: {', '.join(f'{name} → {decided}' for name, decided in wrong)}"
