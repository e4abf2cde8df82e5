"""The label draws of the synthetic archive: combinations, findings, patients and their follow-ups.

Kept apart from the drawing of pixels: these draws decide what the CSV says, and they come from
the archive's labels stream alone, so the PNG and DICOM archives of one seed agree row by row.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..labels import CLASS_FINDINGS, CLASSES, COMBINATIONS, TABLE1_COUNTS, combination_vector

# Images carrying each finding in the full CXR14 release: which finding of a class an image gets.
_FINDING_PREVALENCE: dict[str, int] = {
    "Cardiomegaly": 2776, "Infiltration": 19894, "Fibrosis": 1686, "Atelectasis": 11559,
    "Mass": 5782, "Nodule": 6331, "Pneumonia": 1431, "Consolidation": 4667, "Edema": 2303,
    "Pneumothorax": 5302, "Effusion": 13317, "Pleural_Thickening": 3385, "Hernia": 227,
    "Emphysema": 2516,
}
_SECOND_PA_FINDING_P = 0.25  # share of Pa images with two parenchymal findings (when <= 3 in all)


def draw_combinations(n: int, rng: np.random.Generator, min_per_combination: int = 2) -> list[str]:
    """`n` combination names in Table 1 proportions, each at least `min_per_combination` times, shuffled.

    Counts are the floor plus a largest-remainder share of the rest, so proportions are exact up to
    rounding rather than subject to multinomial noise; only the order is random.
    """
    floor = len(COMBINATIONS) * min_per_combination
    if n < floor:
        raise ValueError(
            f"{n} images cannot hold {len(COMBINATIONS)} combinations x {min_per_combination}; need >= {floor}"
        )
    weights = np.array([TABLE1_COUNTS[c] for c in COMBINATIONS], dtype=float)
    quota = (n - floor) * weights / weights.sum()
    counts = np.floor(quota).astype(int)
    leftover = n - floor - counts.sum()
    counts[np.argsort(-(quota - counts), kind="stable")[:leftover]] += 1
    names = np.repeat(np.array(COMBINATIONS, dtype=object), counts + min_per_combination)
    return list(rng.permutation(names))


def draw_findings(combination: str, rng: np.random.Generator) -> tuple[str, ...]:
    """CXR14 findings for a combination: one per class (two for Pa now and then), alphabetical."""
    codes = [c for c, bit in zip(CLASSES, combination_vector(combination)) if bit]
    findings: list[str] = []
    for code in codes:
        options = CLASS_FINDINGS[code]
        p = np.array([_FINDING_PREVALENCE[f] for f in options], dtype=float)
        k = 2 if code == "Pa" and len(codes) < 3 and rng.random() < _SECOND_PA_FINDING_P else 1
        findings.extend(str(f) for f in rng.choice(options, size=k, replace=False, p=p / p.sum()))
    return tuple(sorted(findings))


def patient_sizes(n: int, mean: float, rng: np.random.Generator) -> list[int]:
    """Images per patient (geometric, like CXR14's long tail of follow-ups) summing to n."""
    sizes: list[int] = []
    left = n
    while left > 0:
        sizes.append(min(left, int(rng.geometric(1.0 / mean))))
        left -= sizes[-1]
    return sizes


def draw_visits(combos: Sequence[str], age: int, rng: np.random.Generator) -> list[tuple[tuple[str, ...], str, int]]:
    """(findings, view, age) of one patient's follow-ups; the age rises by 0 or 1 year between them.

    All of a patient's labels are drawn before their scans are written, so that a DICOM study's
    date can be placed in the right year of life; the draws stay in the order of the CSV's rows.
    """
    visits = []
    for combo in combos:
        findings = draw_findings(combo, rng)
        view = "AP" if rng.random() < 0.4 else "PA"
        visits.append((findings, view, age))
        age = min(95, age + int(rng.integers(0, 2)))
    return visits
