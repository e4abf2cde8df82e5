"""The fair protocol: the baseline's thresholds are fitted on the validation fold and never see the
test fold's labels; the paper-style figures stay beside them, labelled."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_evaluation import grid_references, noisy_predictions, predictions, write_run

from clare_dist import evaluation as ev
from clare_dist.evaluation_report import evaluation_markdown
from clare_dist.labels import CLASSES, COMBINATION_INDEX, COMBINATION_VECTORS
from clare_dist.metrics import MEAN_ROW
from clare_dist.runs import VALIDATION_PREDICTIONS_FILE, fold_dir


def relabelled(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same scores and points with the ground truth shuffled among the rows (still valid labels)."""
    order = np.random.default_rng(seed).permutation(len(frame))
    out = frame.copy()
    out["combination"] = frame["combination"].to_numpy()[order]
    bits = COMBINATION_VECTORS[[COMBINATION_INDEX[c] for c in out["combination"]]]
    for k, code in enumerate(CLASSES):
        out[code] = bits[:, k].astype(np.int8)
    return out


def test_the_fair_thresholds_never_see_the_test_labels():
    refs = grid_references()
    test, validation = noisy_predictions(refs, 0), noisy_predictions(refs, 1)
    before = ev.evaluate_fold(test, refs, validation).thresholds
    after = ev.evaluate_fold(relabelled(test, seed=3), refs, validation).thresholds
    pd.testing.assert_frame_equal(before[list(ev.FAIR_BASELINES)], after[list(ev.FAIR_BASELINES)])
    assert not before[["B_ROC", "B_PR"]].equals(after[["B_ROC", "B_PR"]])  # the paper-style ones do move
    moved = ev.evaluate_fold(test, refs, relabelled(validation, seed=4)).thresholds
    assert not before[list(ev.FAIR_BASELINES)].equals(moved[list(ev.FAIR_BASELINES)])  # they are fitted on validation


def test_perfect_validation_scores_give_the_fair_baseline_the_paper_style_one():
    refs = grid_references()
    fold = ev.evaluate_fold(predictions(refs), refs, predictions(refs, fold=1))
    for fair, paper in zip(ev.FAIR_BASELINES, ("B_ROC", "B_PR")):
        pd.testing.assert_frame_equal(fold.tables[fair], fold.tables[paper])
    np.testing.assert_allclose(fold.tables[ev.KNN]["f1"].to_numpy(float), 1.0)  # points on their own references


def test_the_knn_decoder_takes_the_most_frequent_combination_of_the_nearest_known_cases():
    known = pd.DataFrame({"x": [0.0, 0.1, 0.2, 5.0, 5.1], "y": 0.0, "combination": ["Ca", "Pa", "Pa", "Pn", "Pn"]})
    bits = ev.knn_decisions(np.array([[0.05, 0.0], [5.0, 0.0], [0.0, 0.0]]), known, k=3)
    assert [ev.pattern_names(b[None])[0] for b in bits] == ["Pa", "Pn", "Pa"]
    tie = ev.knn_decisions(np.array([[0.0, 0.0]]), known.iloc[:2], k=2)  # one each: the nearest one's
    assert ev.pattern_names(tie)[0] == "Ca"


@pytest.fixture(scope="module")
def fair_run(tmp_path_factory):
    refs = grid_references()
    frames = {fold: noisy_predictions(refs, fold) for fold in range(5)}
    run = write_run(tmp_path_factory.mktemp("fair"), refs, frames)
    for fold in range(5):
        noisy_predictions(refs, (fold + 1) % 5).to_parquet(fold_dir(run, fold) / VALIDATION_PREDICTIONS_FILE)
    return run


def test_a_run_with_validation_predictions_reports_the_fair_figures_first(fair_run):
    evaluation = ev.evaluate_run(fair_run)
    assert evaluation.fair
    per_fold = evaluation.per_fold_f1
    diff = per_fold["R4"] - per_fold["B_PR_fair"]
    headline = evaluation.headline
    assert headline["fair_r4_minus_baseline_pr"] == pytest.approx(diff.mean())
    assert headline["fair_r4_minus_baseline_pr_std"] == pytest.approx(diff.std(ddof=1))
    assert headline["fair_baseline_pr_mean_f1"] == pytest.approx(evaluation.mean["B_PR_fair"].loc[MEAN_ROW, "f1"])
    text = evaluation_markdown(evaluation)
    assert text.index("## Fair protocol") < text.index("## Table 2 (paper-style)")
    assert "| B_PR_fair |" in text and "| B_ROC_fair |" in text and "| kNN |" in text and "R4 − baseline, mean F1" in text
    assert "and the kNN decoder" in text and headline["knn_mean_f1"] == pytest.approx(evaluation.mean["kNN"].loc[MEAN_ROW, "f1"])
    assert "**R4 against the baseline, fairly (thresholds fitted on the validation fold):**" in text


def test_a_run_without_them_says_so_and_shows_the_paper_style_tables(tmp_path):
    refs = grid_references()
    run = write_run(tmp_path / "old", refs, {0: noisy_predictions(refs, 0), 1: noisy_predictions(refs, 1)})
    evaluation = ev.evaluate_run(run)
    text = evaluation_markdown(evaluation)
    assert not evaluation.fair and "fair_baseline_pr_mean_f1" not in evaluation.headline
    assert "Not available: this run's folds hold no validation predictions" in text
    assert "(paper-style, thresholds tuned on the test fold)" in text


def test_validation_predictions_of_the_wrong_fold_are_refused(tmp_path):
    refs = grid_references()
    run = write_run(tmp_path / "run", refs, {0: noisy_predictions(refs, 0)})
    noisy_predictions(refs, 3).to_parquet(fold_dir(run, 0) / VALIDATION_PREDICTIONS_FILE)  # fold 0 validates on 1
    with pytest.raises(ev.PredictionsError, match=r"fold_0: predictions must all belong to fold 1"):
        ev.evaluate_run(run)
