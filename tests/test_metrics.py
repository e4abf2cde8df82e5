"""Known answers, worked out by hand, for the evaluation tables (paper Tables 2-4) and the MSE."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from clare_dist import metrics
from clare_dist.labels import CLASSES


def columns(*cols: list[float]) -> np.ndarray:
    """An [N, 5] array from five per-class columns."""
    return np.array(cols, dtype=float).T


def tiled(col: list[float]) -> np.ndarray:
    """The same column for all five classes."""
    return columns(*[col] * len(CLASSES))


# Scores sorted by hand: 0.9(+) 0.7(+) 0.6(-) 0.4(+) 0.2(-) 0.1(-).
# Predicted positive when score >= t:
#   t    TP FP  precision recall  F1    TPR-FPR
#   0.9  1  0   1         1/3     1/2   1/3
#   0.7  2  0   1         2/3     4/5   2/3
#   0.6  2  1   2/3       2/3     2/3   1/3
#   0.4  3  1   3/4       1       6/7   2/3
#   0.2  3  2   3/5       1       3/4   1/3
#   0.1  3  3   1/2       1       2/3   0
Y = [0, 0, 0, 1, 1, 1]
S = [0.1, 0.2, 0.6, 0.4, 0.7, 0.9]

# Scores 0.9(-) 0.8(+) 0.7(-) 0.6(+): precision 0, 1/2, 1/3, 1/2 and recall 0, 1/2, 1/2, 1
# at t = 0.9, 0.8, 0.7, 0.6. Precision = recall at both 0.9 (F1 0) and 0.8 (F1 1/2).
Y_TIE = [0, 1, 0, 1]
S_TIE = [0.9, 0.8, 0.7, 0.6]


def test_class_metrics_known_answer():
    y_true = columns(
        [1, 1, 0, 0, 0, 0],  # Ca: TP 1, FP 1, FN 1, TN 3
        [1, 1, 1, 0, 0, 0],  # Pa: TP 3, FP 1, TN 2
        [0, 0, 0, 0, 0, 0],  # Pn: no positives, one false positive
        [1, 0, 0, 0, 0, 0],  # Pl: nothing predicted
        [1, 1, 1, 1, 1, 1],  # Ot: all right
    )
    y_pred = columns(
        [1, 0, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
    )
    table = metrics.class_metrics(y_true, y_pred)
    expected = pd.DataFrame(
        {
            "accuracy": [4 / 6, 5 / 6, 5 / 6, 5 / 6, 1.0],
            "precision": [1 / 2, 3 / 4, 0.0, 0.0, 1.0],  # Pl: 0/0 -> 0
            "recall": [1 / 2, 1.0, 0.0, 0.0, 1.0],  # Pn: 0/0 -> 0
            "f1": [1 / 2, 6 / 7, 0.0, 0.0, 1.0],
        },
        index=pd.Index(CLASSES, name="class"),
    )
    expected.loc["MEAN"] = [25 / 30, 2.25 / 5, 2.5 / 5, (1.5 + 6 / 7) / 5]
    pd.testing.assert_frame_equal(table, expected)


def test_class_metrics_rejects_bad_shapes_and_values():
    with pytest.raises(ValueError, match="shape"):
        metrics.class_metrics(np.zeros((3, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="0 and 1"):
        metrics.class_metrics(np.full((3, 5), 2), np.zeros((3, 5)))


def test_roc_threshold_maximises_youden_ties_to_highest_threshold():
    # J = 2/3 at both 0.7 and 0.4: the higher threshold wins.
    np.testing.assert_array_equal(metrics.roc_thresholds(tiled(Y), tiled(S)), [0.7] * 5)
    # An obvious case: perfectly separated at 0.5.
    y = columns(*[[0, 0, 1, 1]] * 5)
    s = columns(*[[0.1, 0.3, 0.5, 0.8]] * 5)
    np.testing.assert_array_equal(metrics.roc_thresholds(y, s), [0.5] * 5)


def test_pr_break_even_gives_precision_equal_recall():
    thresholds = metrics.pr_break_even_thresholds(tiled(Y), tiled(S))
    np.testing.assert_array_equal(thresholds, [0.6] * 5)
    table = metrics.class_metrics(tiled(Y), metrics.binarize(tiled(S), thresholds))
    np.testing.assert_array_equal(table["precision"], table["recall"])
    assert table.loc["Ca", "precision"] == 2 / 3


def test_pr_break_even_ties_go_to_higher_f1():
    np.testing.assert_array_equal(metrics.pr_break_even_thresholds(tiled(Y_TIE), tiled(S_TIE)), [0.8] * 5)


def test_binarize_is_score_at_least_threshold():
    s = columns([0.1, 0.5], [0.5, 0.9], [0.2, 0.2], [1.0, 0.0], [0.3, 0.4])  # nothing reaches +inf
    expected = columns([0, 1], [1, 1], [0, 0], [0, 0], [0, 1])
    np.testing.assert_array_equal(metrics.binarize(s, [0.5, 0.5, 0.3, np.inf, 0.4]), expected)


def test_class_without_positives_or_negatives_falls_back(caplog):
    y = columns([0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1])
    s = tiled([0.1, 0.3, 0.5, 0.8])
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="clare_dist.metrics"):
        warnings.simplefilter("error")  # no UndefinedMetricWarning / nan leaking out of scikit-learn
        for choose in (metrics.roc_thresholds, metrics.pr_break_even_thresholds):
            np.testing.assert_array_equal(choose(y, s), [0.5, 0.5, 0.5, 0.5, 0.5])
        recall = metrics.baseline_at_fixed_recall(y, s, [0.5] * 5)
        precision = metrics.baseline_at_fixed_precision(y, s, [0.5] * 5)
    assert "class Ca: y_true has no positives" in caplog.text
    assert "class Pa: y_true has no negatives" in caplog.text
    for table in (recall, precision):
        assert table.loc["Ca", "threshold"] == 0.5
        assert table.loc["Ca", ["recall", "precision", "f1"]].tolist() == [0.0, 0.0, 0.0]
        assert table.loc["Pa", ["recall", "precision", "f1"]].tolist() == [0.5, 1.0, 2 / 3]
        assert not table.drop(columns="threshold").isna().any().any()


def test_baseline_at_fixed_recall_takes_highest_threshold_reaching_target():
    # Targets per class: 0.5 and 2/3 are reached first at 0.7, 0.9 and 1.0 at 0.4, 0.2 at 0.9.
    table = metrics.baseline_at_fixed_recall(tiled(Y), tiled(S), [0.5, 2 / 3, 0.9, 1.0, 0.2])
    expected = pd.DataFrame(
        {
            "recall": [2 / 3, 2 / 3, 1.0, 1.0, 1 / 3],
            "precision": [1.0, 1.0, 3 / 4, 3 / 4, 1.0],
            "f1": [4 / 5, 4 / 5, 6 / 7, 6 / 7, 1 / 2],
            "threshold": [0.7, 0.7, 0.4, 0.4, 0.9],
        },
        index=pd.Index(CLASSES, name="class"),
    )
    expected.loc["MEAN"] = [*expected.mean(axis=0).iloc[:3], np.nan]
    pd.testing.assert_frame_equal(table, expected)


def test_baseline_at_fixed_precision_takes_largest_recall_reaching_target():
    # 0.7 -> 0.4 (P 3/4, R 1); 0.8 and 1.0 -> 0.7 (P 1, R 2/3); 0.5 and 0.6 -> recall 1 at
    # 0.1, 0.2 and 0.4, of which the highest threshold (best precision) 0.4.
    table = metrics.baseline_at_fixed_precision(tiled(Y), tiled(S), [0.7, 0.8, 1.0, 0.5, 0.6])
    assert table["threshold"].iloc[:5].tolist() == [0.4, 0.7, 0.7, 0.4, 0.4]
    assert table.loc["Ca", ["recall", "precision", "f1"]].tolist() == [1.0, 3 / 4, 6 / 7]
    assert table.loc["Pa", ["recall", "precision", "f1"]].tolist() == [2 / 3, 1.0, 4 / 5]


def test_baseline_at_fixed_precision_unreachable_takes_closest_precision():
    # Best precision is 1/2, at 0.8 (R 1/2) and 0.6 (R 1): the larger recall wins.
    table = metrics.baseline_at_fixed_precision(tiled(Y_TIE), tiled(S_TIE), [0.8] * 5)
    assert table.loc["Ca"].tolist() == [1.0, 1 / 2, 2 / 3, 0.6]


def test_fixed_targets_read_a_series_by_class():
    targets = pd.Series([0.2, 0.9, 0.9, 0.9, 0.9, 0.5], index=["Ot", "Ca", "Pa", "Pn", "Pl", "MEAN"])
    table = metrics.baseline_at_fixed_recall(tiled(Y), tiled(S), targets)
    assert table["threshold"].iloc[:5].tolist() == [0.4, 0.4, 0.4, 0.4, 0.9]


def test_mean_std_over_folds():
    index = pd.Index(["Ca", "MEAN"], name="class")
    base = pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], index=index, columns=["precision", "recall"])
    folds = [base * k for k in (1, 2, 3)]
    mean, std = metrics.mean_std(folds)
    pd.testing.assert_frame_equal(mean, folds[1])  # 2× the first table
    pd.testing.assert_frame_equal(std, folds[0])  # sample std of (k, 2k, 3k) is k
    _, population = metrics.mean_std(folds, ddof=0)
    np.testing.assert_allclose(population.to_numpy(), folds[0].to_numpy() * np.sqrt(2 / 3))
    _, single = metrics.mean_std(folds[:1])
    assert single.isna().all().all()


def test_mean_std_rejects_mismatched_tables():
    a = pd.DataFrame([[1.0]], index=["Ca"], columns=["f1"])
    with pytest.raises(ValueError, match="same index"):
        metrics.mean_std([a, a.rename(index={"Ca": "Pa"})])


def test_format_mean_std():
    mean = pd.DataFrame([[0.7554, np.nan], [0.5, 0.25]], index=["Ca", "Pa"], columns=["f1", "threshold"])
    std = pd.DataFrame([[0.0123, np.nan], [np.nan, 0.0]], index=["Ca", "Pa"], columns=["f1", "threshold"])
    expected = pd.DataFrame(
        [["0.755 ± 0.012", "n/a"], ["0.500", "0.250 ± 0.000"]], index=["Ca", "Pa"], columns=["f1", "threshold"]
    )
    pd.testing.assert_frame_equal(metrics.format_mean_std(mean, std), expected)
    assert metrics.format_mean_std(mean, std, digits=1).loc["Ca", "f1"] == "0.8 ± 0.0"


def test_to_markdown():
    df = pd.DataFrame(
        [["0.755 ± 0.012", 0.5], ["a|b", 1]], index=pd.Index(["Ca", "MEAN"], name="class"), columns=["f1", "recall"]
    )
    assert metrics.to_markdown(df) == (
        "| class | f1 | recall |\n"
        "| --- | --- | --- |\n"
        "| Ca | 0.755 ± 0.012 | 0.500 |\n"
        "| MEAN | a\\|b | 1.000 |\n"
    )


def test_regression_mse_and_per_combination():
    pred = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    target = np.array([[1.0, 0.0], [1.0, 3.0], [2.0, 2.0]])
    # squared errors: (1, 0), (0, 4), (0, 0) -> 5 / 6 overall
    assert metrics.regression_mse(pred, target) == pytest.approx(5 / 6)
    by_combination = metrics.mse_by_combination(pred, target, np.array(["Pa", "No Finding", "Pa"]))
    expected = pd.Series([2.0, 0.25], index=pd.Index(["No Finding", "Pa"], name="combination"), name="mse")
    pd.testing.assert_series_equal(by_combination, expected)
