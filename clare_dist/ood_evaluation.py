"""The "needs human review" flag measured on a run: the share it flags of in-distribution scans
and of scans the model should not judge, per fold, then mean ± std over the folds.

Each fold fitted its threshold on its validation fold (`clare_dist.ood_fit`), so the validation
share is at most `ood.FLAG_RATE` by construction; the figures that count are the test fold's
in-distribution scans (target ≤ `ID_TARGET`, never seen by the fit) and the outliers made of the
test fold's scans (target ≥ `OUTLIER_TARGET`), overall and per kind. Read from the fold files,
numpy and pandas only; a run trained before the OOD score has none of them, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from clare_dist.ood import OOD_OUTPUT, needs_review
from clare_dist.runs import OUTLIER_PREDICTIONS_FILE, PREDICTIONS_FILE, VALIDATION_PREDICTIONS_FILE, fold_dir
from clare_dist.synth.outliers import OUTLIER_KINDS

ID_TARGET = 0.05  # flagged share of in-distribution test scans, at most
OUTLIER_TARGET = 0.95  # flagged share of outliers, at least
VALIDATION, TEST, OUTLIERS = "validation (in-distribution, threshold fitted here)", "test (in-distribution)", "outliers, all kinds"


@dataclass(frozen=True)
class OODFigures:
    """Flagged shares: one row per fold, columns VALIDATION, TEST, OUTLIERS, then each kind of outlier."""

    flagged: pd.DataFrame
    scans: pd.DataFrame  # the same shape: how many scans each share is of

    def mean(self) -> pd.Series:
        return self.flagged.mean()

    def std(self) -> pd.Series:
        return self.flagged.std(ddof=1) if len(self.flagged) > 1 else self.flagged.mean() * float("nan")

    @property
    def meets_targets(self) -> bool:
        """Whether the mean shares meet both targets: ≤ 5 % of test scans, ≥ 95 % of outliers."""
        mean = self.mean()
        return bool(mean[TEST] <= ID_TARGET and mean[OUTLIERS] >= OUTLIER_TARGET)

    def to_json(self) -> dict[str, Any]:
        return {
            "targets": {"test_flagged_at_most": ID_TARGET, "outliers_flagged_at_least": OUTLIER_TARGET},
            "meets_targets": self.meets_targets,
            "mean": {k: float(v) for k, v in self.mean().items()},
            "std": {k: (None if pd.isna(v) else float(v)) for k, v in self.std().items()},
            "folds": {str(f): {"flagged": {k: float(v) for k, v in row.items()},
                               "scans": {k: int(v) for k, v in self.scans.loc[f].items()}}
                      for f, row in self.flagged.iterrows()},
        }


def ood_figures(run: Path, folds: Sequence[int]) -> OODFigures | None:
    """The flagged shares of every fold in `folds`, or None when any of them lacks the OOD score."""
    flagged, counts = {}, {}
    for fold in folds:
        directory = fold_dir(run, fold)
        files = {VALIDATION: directory / VALIDATION_PREDICTIONS_FILE, TEST: directory / PREDICTIONS_FILE,
                 OUTLIERS: directory / OUTLIER_PREDICTIONS_FILE}
        if not all(path.is_file() for path in files.values()):
            return None
        tables = {name: pd.read_parquet(path) for name, path in files.items()}
        if any(OOD_OUTPUT not in table.columns for table in tables.values()):
            return None
        parts = {name: table[OOD_OUTPUT] for name, table in tables.items()}
        by_kind = tables[OUTLIERS].groupby("kind")[OOD_OUTPUT]
        parts |= {kind: by_kind.get_group(kind) for kind in OUTLIER_KINDS if kind in by_kind.groups}
        flagged[fold] = {name: float(needs_review(scores.to_numpy()).mean()) for name, scores in parts.items()}
        counts[fold] = {name: len(scores) for name, scores in parts.items()}
    return OODFigures(pd.DataFrame(flagged).T.rename_axis("fold"), pd.DataFrame(counts).T.rename_axis("fold"))
