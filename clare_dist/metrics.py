"""Evaluation of CLARE-XR and its baseline: the paper's Tables 2-4 and the regression MSE.

Everything here is a pure function of arrays (no I/O), so the CV job, the CLI and the tests
compute the tables the same way. Class columns are always in `labels.CLASSES` order
(Ca, Pa, Pn, Pl, Ot); the tables end with a "MEAN" row, the unweighted mean of the five
class rows, as in the paper.

Conventions, fixed once here:
- Zero division gives 0.0: precision with no predicted positives, recall with no actual
  positives and F1 with precision + recall = 0 are all reported as 0.0, never nan.
- A prediction is positive when score >= threshold (the convention of scikit-learn's curves,
  so a threshold read off a curve reproduces that curve's point under `binarize`).
- A class whose y_true has no positives or no negatives has no curve to choose a threshold
  from (small folds can lack Ca or Ot). It gets `FALLBACK_THRESHOLD` (0.5, the sigmoid's own
  decision boundary) and a logged warning, instead of an exception or nan.
- Mean ± std over folds uses the sample standard deviation (ddof=1) by default.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    mean_squared_error,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from .labels import COMBINATION_INDEX, CLASSES

logger = logging.getLogger(__name__)

MEAN_ROW = "MEAN"
FALLBACK_THRESHOLD = 0.5
METRIC_COLUMNS = ("accuracy", "precision", "recall", "f1")
OPERATING_POINT_COLUMNS = ("recall", "precision", "f1", "threshold")

# Chooses one threshold from a class's ground truth (0/1) and scores.
ThresholdRule = Callable[[np.ndarray, np.ndarray], float]


# ----------------------------------------------------------------------------- validation


def _class_matrix(a: np.ndarray, name: str, *, binary: bool) -> np.ndarray:
    """`a` as an [N, 5] array; binary ones must hold only 0 and 1."""
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[1] != len(CLASSES) or a.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N>0, {len(CLASSES)}] (classes {CLASSES}); got {a.shape}")
    if binary and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1")
    if not binary and not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    return a.astype(np.int8) if binary else a.astype(np.float64)


def _per_class(values: np.ndarray | pd.Series | Sequence[float], name: str) -> np.ndarray:
    """Five per-class targets; a Series indexed by class (e.g. a metrics column) is read by class."""
    if isinstance(values, pd.Series):
        values = values.loc[list(CLASSES)]
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (len(CLASSES),) or not ((v >= 0) & (v <= 1)).all():
        raise ValueError(f"{name} must be {len(CLASSES)} values in [0, 1] in class order {CLASSES}; got {v}")
    return v


def _with_mean(table: pd.DataFrame) -> pd.DataFrame:
    table.loc[MEAN_ROW] = table.mean(axis=0)
    return table


# ----------------------------------------------------------------------------- Tables 2-3


def class_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """Per-class accuracy, precision, recall and F1 of 0/1 predictions, plus the MEAN row.

    Each class is scored on its own (the paper's multi-label evaluation: a positive counts for
    a class whatever else is predicted with it). Zero division gives 0.0.
    """
    y_true = _class_matrix(y_true, "y_true", binary=True)
    y_pred = _class_matrix(y_pred, "y_pred", binary=True)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0.0)
    accuracy = [accuracy_score(y_true[:, k], y_pred[:, k]) for k in range(len(CLASSES))]
    table = pd.DataFrame(
        {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1},
        index=pd.Index(CLASSES, name="class"),
        dtype=np.float64,
    )
    return _with_mean(table)


# ----------------------------------------------------------------------------- thresholds


def _pr_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and thresholds (ascending) of every point of the PR curve that has one.

    scikit-learn appends a final (precision 1, recall 0) point with no threshold; it is dropped
    because no `binarize` threshold reproduces it.
    """
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return precision, recall, f1, thresholds


def _argbest(*keys: np.ndarray) -> int:
    """Index that maximises the keys lexicographically (the first key decides, the next break ties).

    Keys are rounded to 12 decimals so that equal fractions reached by different float
    arithmetic (2/3 − 0 and 1 − 1/3) tie, and the tie rule, not rounding noise, decides.
    """
    return int(np.lexsort([np.round(np.asarray(k, dtype=np.float64), 12) for k in keys[::-1]])[-1])


def _degenerate(y: np.ndarray, code: str) -> bool:
    """True (and a warning) when a class column lacks positives or negatives."""
    positives = int(y.sum())
    if 0 < positives < len(y):
        return False
    missing = "positives" if positives == 0 else "negatives"
    logger.warning("class %s: y_true has no %s, so no curve to choose a threshold from; using %s",
                   code, missing, FALLBACK_THRESHOLD)
    return True


def _thresholds(y_true: np.ndarray, y_score: np.ndarray, rules: ThresholdRule | Sequence[ThresholdRule]) -> np.ndarray:
    """One threshold per class: `rules` is one rule for all classes or one per class."""
    if callable(rules):
        rules = [rules] * len(CLASSES)
    y_true = _class_matrix(y_true, "y_true", binary=True)
    y_score = _class_matrix(y_score, "y_score", binary=False)
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} differ in shape")
    return np.array([
        FALLBACK_THRESHOLD if _degenerate(y_true[:, k], code) else rule(y_true[:, k], y_score[:, k])
        for k, (code, rule) in enumerate(zip(CLASSES, rules))
    ])


def _youden(y: np.ndarray, s: np.ndarray) -> float:
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thresholds)  # the leading +inf point predicts nothing; never choose it
    return float(thresholds[finite][_argbest((tpr - fpr)[finite], thresholds[finite])])


def _break_even(y: np.ndarray, s: np.ndarray) -> float:
    precision, recall, f1, thresholds = _pr_points(y, s)
    return float(thresholds[_argbest(-np.abs(precision - recall), f1, thresholds)])


def roc_thresholds(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Per-class thresholds maximising Youden's J = TPR − FPR on the ROC curve (the paper's B_ROC).

    Ties go to the highest threshold (fewest positives for the same J). Only thresholds equal
    to an actual score are considered, so at least one case is predicted positive.
    """
    return _thresholds(y_true, y_score, _youden)


def pr_break_even_thresholds(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Per-class thresholds at the precision–recall break-even point (the paper's B_PR).

    The paper's PR thresholds give precision = recall for every class (Table 2), so the PR
    criterion is the point of the PR curve where |precision − recall| is smallest. Ties go to
    the higher F1, then to the highest threshold.
    """
    return _thresholds(y_true, y_score, _break_even)


def binarize(y_score: np.ndarray, thresholds: np.ndarray | Sequence[float]) -> np.ndarray:
    """0/1 predictions [N, 5]: a class is positive when its score >= its threshold."""
    y_score = _class_matrix(y_score, "y_score", binary=False)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (len(CLASSES),):
        raise ValueError(f"thresholds must be {len(CLASSES)} values in class order {CLASSES}; got {thresholds.shape}")
    return (y_score >= thresholds).astype(np.int8)


# ----------------------------------------------------------------------------- Table 4


def _operating_points(y_true: np.ndarray, y_score: np.ndarray, thresholds: np.ndarray) -> pd.DataFrame:
    """Recall, precision, F1 and threshold per class at the given thresholds, plus MEAN.

    The MEAN row's threshold is nan: a mean of thresholds of different classes means nothing.
    """
    table = class_metrics(y_true, binarize(y_score, thresholds)).drop(index=MEAN_ROW)
    table = table.loc[:, ["recall", "precision", "f1"]]
    table["threshold"] = thresholds
    table = _with_mean(table)
    table.loc[MEAN_ROW, "threshold"] = np.nan
    return table


def baseline_at_fixed_recall(
    y_true: np.ndarray, y_score: np.ndarray, target_recall: np.ndarray | pd.Series | Sequence[float]
) -> pd.DataFrame:
    """The baseline's precision and F1 at R4's recall (left half of the paper's Table 4).

    Per class, the threshold is the highest one whose recall is >= the target, i.e. the point
    with the smallest recall that still reaches the target; among thresholds with that recall it
    has the fewest false positives, hence the best precision. Recall only grows as the threshold
    falls and reaches 1 at the lowest score, so such a threshold always exists. The `recall`
    column is the recall achieved there (>= the target; equal up to the granularity of the
    scores). `target_recall` is five values in class order, or a Series indexed by class such
    as `class_metrics(...)["recall"]`. Degenerate classes use `FALLBACK_THRESHOLD`.
    """

    def rule(y: np.ndarray, s: np.ndarray, target: float) -> float:
        _, recall, _, thresholds = _pr_points(y, s)
        return float(thresholds[recall >= target].max())

    return _at_targets(y_true, y_score, _per_class(target_recall, "target_recall"), rule)


def baseline_at_fixed_precision(
    y_true: np.ndarray, y_score: np.ndarray, target_precision: np.ndarray | pd.Series | Sequence[float]
) -> pd.DataFrame:
    """The baseline's recall and F1 at R4's precision (right half of the paper's Table 4).

    Precision is not monotonic in the threshold, so per class the threshold is the one with
    the largest recall among all thresholds whose precision is >= the target (ties: the highest
    threshold, hence the best precision). If no threshold reaches the target, the one with
    the highest precision (the closest to the target) is used, ties going to the larger recall,
    then the highest threshold; the `precision` column then shows the shortfall. The
    `precision` column is the precision achieved, not the target. Degenerate classes use
    `FALLBACK_THRESHOLD`.
    """

    def rule(y: np.ndarray, s: np.ndarray, target: float) -> float:
        precision, recall, _, thresholds = _pr_points(y, s)
        reaches = precision >= target
        if reaches.any():
            return float(thresholds[_argbest(reaches, recall, thresholds)])
        return float(thresholds[_argbest(precision, recall, thresholds)])

    return _at_targets(y_true, y_score, _per_class(target_precision, "target_precision"), rule)


def _at_targets(
    y_true: np.ndarray,
    y_score: np.ndarray,
    targets: np.ndarray,
    rule: Callable[[np.ndarray, np.ndarray, float], float],
) -> pd.DataFrame:
    thresholds = _thresholds(y_true, y_score, [partial(rule, target=t) for t in targets])
    return _operating_points(y_true, y_score, thresholds)


def any_finding_auroc(y_true: np.ndarray, scores: dict[str, np.ndarray]) -> pd.Series:
    """AUROC of each ranking score for "any finding" (a row with any class bit set): how well it
    orders abnormal scans before normal ones. nan, with a warning, for a fold that holds only one kind."""
    abnormal = _class_matrix(y_true, "y_true", binary=True).any(axis=1)
    if abnormal.all() or not abnormal.any():
        logger.warning("any-finding AUROC undefined: the fold holds only %s scans", "abnormal" if abnormal.all() else "normal")
        return pd.Series({name: np.nan for name in scores}, name="auroc")
    return pd.Series({name: float(roc_auc_score(abnormal, np.asarray(s, dtype=np.float64))) for name, s in scores.items()},
                     name="auroc")


# ----------------------------------------------------------------------------- folds and reports


def mean_std(tables: Sequence[pd.DataFrame], ddof: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Elementwise mean and standard deviation of per-fold tables of the same shape.

    The default ddof=1 is the sample standard deviation: the five folds are a sample of the
    splits the method could have been evaluated on. With a single table it is nan (undefined),
    which `format_mean_std` prints as the mean alone. nan cells (the MEAN row's threshold)
    stay nan.
    """
    if not tables:
        raise ValueError("mean_std needs at least one table")
    first = tables[0]
    for t in tables[1:]:
        if not (t.index.equals(first.index) and t.columns.equals(first.columns)):
            raise ValueError("all tables must have the same index and columns, in the same order")
    stack = np.stack([t.to_numpy(dtype=np.float64) for t in tables])
    mean = pd.DataFrame(stack.mean(axis=0), index=first.index, columns=first.columns)
    if len(tables) > ddof:
        std_values = stack.std(axis=0, ddof=ddof)
    else:
        std_values = np.full(stack.shape[1:], np.nan)
    return mean, pd.DataFrame(std_values, index=first.index, columns=first.columns)


def format_mean_std(mean: pd.DataFrame, std: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Cells as "0.755 ± 0.012"; a nan std (one fold) gives "0.755", a nan mean gives "n/a"."""

    def cell(m: float, s: float) -> str:
        if np.isnan(m):
            return "n/a"
        if np.isnan(s):
            return f"{m:.{digits}f}"
        return f"{m:.{digits}f} ± {s:.{digits}f}"

    cells = [[cell(m, s) for m, s in zip(mrow, srow)] for mrow, srow in zip(mean.to_numpy(float), std.to_numpy(float))]
    return pd.DataFrame(cells, index=mean.index, columns=mean.columns)


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A plain Markdown pipe table (index first), without pandas' optional `tabulate` dependency.

    Floats are printed with `digits` decimals, everything else with str(); "|" in a cell is
    escaped.
    """

    def cell(value: object) -> str:
        text = f"{value:.{digits}f}" if isinstance(value, (float, np.floating)) else str(value)
        return text.replace("|", "\\|")

    header = [df.index.name or ""] + [str(c) for c in df.columns]
    rows = [[cell(label)] + [cell(v) for v in values] for label, values in zip(df.index, df.itertuples(index=False))]
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


# ----------------------------------------------------------------------------- regression


def _coordinates(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if pred.ndim != 2 or pred.shape[1] != 2 or pred.shape != target.shape or len(pred) == 0:
        raise ValueError(f"pred and target must both have shape [N>0, 2]; got {pred.shape} and {target.shape}")
    return pred, target


def regression_mse(pred: np.ndarray, target: np.ndarray) -> float:
    """MSE of predicted 2-D coordinates: the mean over all N×2 squared errors (the training loss)."""
    pred, target = _coordinates(pred, target)
    return float(mean_squared_error(target, pred))


def mse_by_combination(pred: np.ndarray, target: np.ndarray, combinations: np.ndarray | Sequence[str]) -> pd.Series:
    """MSE per ground-truth combination, as `regression_mse` on each combination's rows.

    Ordered as `labels.COMBINATIONS` (No Finding first); a name outside it comes last, by name.
    """
    pred, target = _coordinates(pred, target)
    names = np.asarray(combinations, dtype=object)
    if names.shape != (len(pred),):
        raise ValueError(f"combinations must be {len(pred)} names, one per row; got shape {names.shape}")
    per_row = pd.Series(((pred - target) ** 2).mean(axis=1))
    mse = per_row.groupby(names).mean()
    order = sorted(mse.index, key=lambda n: (COMBINATION_INDEX.get(n, len(COMBINATION_INDEX)), n))
    return mse.loc[order].rename("mse").rename_axis("combination")
