"""Known answers for the run evaluation (Tables 2-4, regression MSE) and its files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clare_dist import evaluation as ev
from clare_dist.evaluation_report import evaluation_markdown, write_evaluation
from clare_dist.labels import CLASSES, COMBINATION_INDEX, COMBINATION_VECTORS, COMBINATIONS, NO_FINDING
from clare_dist.metrics import MEAN_ROW
from clare_dist.rules import References
from clare_dist.runs import PREDICTIONS_FILE, fold_dir

# With every combination present equally often, each class is in 11 of the 26 combinations
# (1 single, 4 pairs, 6 triples): prevalence 11/26 for every class.
PREVALENCE = 11 / 26


def grid_references() -> References:
    """26 references on a 6 × 5 grid in [0, 1]²: neighbours 0.2 apart."""
    return References.from_mapping({n: ((i % 6) / 5, (i // 6) / 4) for i, n in enumerate(COMBINATIONS)})


def predictions(references: References, *, fold: int = 0, copies: int = 2, coords: np.ndarray | None = None,
                scores: np.ndarray | None = None) -> pd.DataFrame:
    """Every combination `copies` times; by default points on their own reference, scores = truth."""
    names = list(COMBINATIONS) * copies
    bits = COMBINATION_VECTORS[[COMBINATION_INDEX[n] for n in names]]
    coords = references.coords[[COMBINATION_INDEX[n] for n in names]] if coords is None else coords
    scores = bits.astype(np.float64) if scores is None else scores
    df = pd.DataFrame({"image_index": [f"f{fold}_{i:05d}.png" for i in range(len(names))],
                       "fold": np.full(len(names), fold, dtype=np.int64), "combination": names})
    for k, code in enumerate(CLASSES):
        df[code] = bits[:, k].astype(np.int8)
    df["x"], df["y"] = coords[:, 0], coords[:, 1]
    for k, code in enumerate(CLASSES):
        df[f"p_{code}"] = scores[:, k]
    return df[ev.PREDICTION_COLUMNS]


def noisy_predictions(references: References, fold: int) -> pd.DataFrame:
    """A fold with errors in both methods, different per fold."""
    rng = np.random.default_rng(fold)
    clean = predictions(references, fold=fold, copies=4)
    bits = clean[list(CLASSES)].to_numpy()
    coords = clean[["x", "y"]].to_numpy() + rng.normal(0, 0.09, (len(clean), 2))
    scores = np.clip(0.55 * bits + rng.random(bits.shape) * 0.6, 0, 1)
    return predictions(references, fold=fold, copies=4, coords=coords, scores=scores)


def write_run(run: Path, references: References, frames: dict[int, pd.DataFrame]) -> Path:
    """A run directory as training leaves it (references.json in save_references' format)."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "references.json").write_text(json.dumps({"format_version": 1, "references": references.to_mapping()}))
    for fold, frame in frames.items():
        fold_dir(run, fold).mkdir(exist_ok=True)
        frame.to_parquet(fold_dir(run, fold) / PREDICTIONS_FILE)
    return run


def assert_table(table: pd.DataFrame, columns: dict[str, float]) -> None:
    for column, value in columns.items():
        np.testing.assert_allclose(table[column].to_numpy(float), value, err_msg=column)


# ----------------------------------------------------------------------------- one fold


def test_points_on_their_references_and_truthful_scores_are_perfect():
    refs = grid_references()
    fold = ev.evaluate_fold(predictions(refs), refs)
    perfect = dict.fromkeys(("accuracy", "precision", "recall", "f1"), 1.0)
    for setting in ("B_ROC", "B_PR", "R1"):
        assert_table(fold.tables[setting], perfect)
    # R2 adds the top-3's classes and R4 the recurrent ones to the closest (the truth here):
    # neither can lose a true class, though neighbours may add false ones.
    for setting in ("R2", "R4"):
        assert_table(fold.tables[setting], {"recall": 1.0})
    assert (fold.tables["R3"]["recall"] <= fold.tables["R4"]["recall"]).all()
    np.testing.assert_allclose(fold.thresholds.to_numpy(), 1.0)
    assert_table(fold.table4[ev.AT_R4_RECALL], {"recall": 1.0, "precision": 1.0, "f1": 1.0})
    assert_table(fold.table4[ev.AT_R4_PRECISION], {"recall": 1.0})
    assert fold.regression_mse == 0.0
    assert list(fold.mse_by_combination.index) == list(COMBINATIONS)
    assert (fold.mse_by_combination == 0).all()
    assert fold.fold == 0 and fold.n_images == 52
    assert fold.triage_auroc.to_dict() == {name: 1.0 for name in ev.TRIAGE_SCORES}  # abnormal scans all ranked first


def test_a_known_offset_gives_its_mse_and_keeps_r1_perfect():
    refs = grid_references()
    clean = predictions(refs)
    shifted = predictions(refs, coords=clean[["x", "y"]].to_numpy() + [0.03, 0.04])
    fold = ev.evaluate_fold(shifted, refs)
    assert fold.regression_mse == pytest.approx((0.03**2 + 0.04**2) / 2)
    np.testing.assert_allclose(fold.mse_by_combination.to_numpy(), (0.03**2 + 0.04**2) / 2)
    assert_table(fold.tables["R1"], {"f1": 1.0})


def test_everything_on_no_finding_and_inverted_scores():
    refs = grid_references()
    n = 2 * len(COMBINATIONS)
    clean = predictions(refs)
    on_no_finding = np.tile(refs.coords[COMBINATION_INDEX[NO_FINDING]], (n, 1))
    inverted = 1.0 - clean[list(CLASSES)].to_numpy(float)
    fold = ev.evaluate_fold(predictions(refs, coords=on_no_finding, scores=inverted), refs)
    # Every rule says No Finding: nothing found, right only on the negatives.
    for setting in ev.RULE_SETTINGS:
        assert_table(fold.tables[setting], {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1 - PREVALENCE})
    # Scores are 1 on negatives, 0 on positives. ROC: J is -1 at t=1 and 0 at t=0, so everything
    # is called positive. PR: t=1 has precision = recall = 0 (break-even), t=0 does not.
    assert_table(fold.tables["B_ROC"], {"recall": 1.0, "precision": PREVALENCE, "accuracy": PREVALENCE,
                                        "f1": 2 * PREVALENCE / (1 + PREVALENCE)})
    assert_table(fold.tables["B_PR"], {"recall": 0.0, "precision": 0.0, "accuracy": 0.0, "f1": 0.0})
    # Table 4: R4's recall 0 is met at t=1; R4's precision 0 is met everywhere, most recall at t=0.
    assert_table(fold.table4[ev.AT_R4_RECALL], {"recall": 0.0, "precision": 0.0})
    assert_table(fold.table4[ev.AT_R4_PRECISION], {"recall": 1.0, "precision": PREVALENCE})
    # Every point on one spot ranks nothing (0.5); so do the inverted scores' maxima (1 on every row:
    # no scan has all five classes).
    assert fold.triage_auroc.to_dict() == {ev.TRIAGE_SCORES[0]: 0.5, ev.TRIAGE_SCORES[1]: 0.5}


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop(columns=["p_Pl"]), r"missing columns \['p_Pl'\]"),
        (lambda df: df.assign(x=df["x"].astype(str)), r"x \(float expected"),
        (lambda df: df.assign(image_index=np.arange(len(df))), r"image_index \(string expected"),
        (lambda df: df.assign(Ca=df["Ca"].astype(float)), r"Ca \(integer expected"),
        (lambda df: df.assign(fold=1), r"fold 0; found folds \[1\]"),
        (lambda df: df.assign(Pa=np.int8(1) - df["Pa"]), "do not spell their combination"),
        (lambda df: df.assign(p_Ca=df["p_Ca"] + 2), r"must lie in \[0, 1\]"),
        (lambda df: df.assign(y=np.nan), "missing values in columns"),
    ],
)
def test_validation_names_the_problem(change, message):
    bad = change(predictions(grid_references()))
    with pytest.raises(ev.PredictionsError, match=message):
        ev.validate_predictions(bad, 0)


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, pd.DataFrame]]:
    refs = grid_references()
    frames = {fold: noisy_predictions(refs, fold) for fold in (0, 1, 3)}
    return write_run(tmp_path_factory.mktemp("run"), refs, frames), frames


@pytest.fixture(scope="module")
def noisy_evaluation(noisy_run) -> ev.RunEvaluation:
    return ev.evaluate_run(noisy_run[0])


def test_run_mean_and_std_are_over_the_folds(noisy_run, noisy_evaluation):
    result, refs = noisy_evaluation, grid_references()
    assert result.folds == (0, 1, 3)
    per_fold = [ev.evaluate_fold(noisy_run[1][f], refs) for f in result.folds]
    for name in ev.SETTINGS + ev.TABLE4:
        tables = [(e.tables | e.table4)[name].to_numpy(float) for e in per_fold]
        np.testing.assert_allclose(result.mean[name].to_numpy(float), np.mean(tables, axis=0), equal_nan=True)
        np.testing.assert_allclose(result.std[name].to_numpy(float), np.std(tables, axis=0, ddof=1), equal_nan=True)
    f1 = np.array([[e.tables[s].loc[MEAN_ROW, "f1"] for s in ev.SETTINGS] for e in per_fold])
    np.testing.assert_allclose(result.per_fold_f1.to_numpy(), f1)
    assert list(result.per_fold_f1.index) == [0, 1, 3]
    mse = [e.regression_mse for e in per_fold]
    assert result.regression_mse == pytest.approx(np.mean(mse))
    assert result.regression_mse_std == pytest.approx(np.std(mse, ddof=1))

    headline = result.headline
    assert headline["r4_mean_f1"] == pytest.approx(f1[:, ev.SETTINGS.index("R4")].mean())
    assert headline["r4_mean_f1_std"] == pytest.approx(f1[:, ev.SETTINGS.index("R4")].std(ddof=1))
    assert headline["baseline_pr_mean_f1"] == pytest.approx(f1[:, ev.SETTINGS.index("B_PR")].mean())
    assert headline["baseline_roc_mean_f1"] == pytest.approx(f1[:, ev.SETTINGS.index("B_ROC")].mean())
    assert headline["r4_beats_baseline_pr"] == (headline["r4_mean_f1"] > headline["baseline_pr_mean_f1"])
    assert headline["regression_mse"] == pytest.approx(np.mean(mse))
    assert headline["folds"] == [0, 1, 3] and headline["images"] == 3 * 4 * 26


def test_a_fold_directory_without_predictions_is_an_error(tmp_path):
    refs = grid_references()
    run = write_run(tmp_path / "run", refs, {0: predictions(refs, fold=0)})
    (run / "fold_2").mkdir()
    with pytest.raises(FileNotFoundError, match=r"fold 2 has no predictions.*fold_2"):
        ev.evaluate_run(run)
    with pytest.raises(FileNotFoundError, match="fold_4"):
        ev.evaluate_run(run, folds=[0, 4])
    assert ev.evaluate_run(run, folds=[0]).folds == (0,)
    with pytest.raises(FileNotFoundError, match="no fold_k directories"):
        ev.evaluate_run(write_run(tmp_path / "empty", refs, {}))


def test_a_predictions_file_with_a_missing_column_names_it_and_the_file(tmp_path):
    refs = grid_references()
    run = write_run(tmp_path / "run", refs, {0: predictions(refs, fold=0),
                                             1: predictions(refs, fold=1).drop(columns=["p_Ot", "y"])})
    with pytest.raises(ev.PredictionsError, match=r"fold_1/predictions.parquet: .*missing columns \['y', 'p_Ot'\]"):
        ev.evaluate_run(run)


def test_one_perfect_fold_reports_that_r4_did_not_beat_a_perfect_baseline():
    refs = grid_references()
    frame = predictions(refs)
    result = ev.summarise([ev.evaluate_fold(frame, refs)], frame, refs)
    assert result.headline["r4_mean_f1_std"] is None  # undefined with one fold
    assert result.headline["r4_beats_baseline_pr"] is False
    text = evaluation_markdown(result)
    assert "did not beat the baseline with PR thresholds (B_PR, 1.000)" in text
    assert "Folds evaluated: 0 (1 of 5; 52 test images)" in text


def test_write_evaluation_files(noisy_evaluation, tmp_path):
    paths = write_evaluation(noisy_evaluation, tmp_path / "out")
    assert set(paths) == {"markdown", "json", "fig4", "roc_pr"}
    for key in ("fig4", "roc_pr"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    text = paths["markdown"].read_text()
    for header in ("## Table 2 (paper-style).", "## Table 3.", "## Table 4.",
                   "| Class | Recall (fixed by R4) | Precision | F1 | Precision (fixed by R4) | Recall | F1 |",
                   "| Class | Accuracy B_ROC | Accuracy B_PR |", "| Class | Accuracy R3 | Accuracy R4 |"):
        assert header in text
    headline = noisy_evaluation.headline
    verb = "beat" if headline["r4_beats_baseline_pr"] else "did not beat"
    assert f"R4's mean F1 ({headline['r4_mean_f1']:.3f} ± {headline['r4_mean_f1_std']:.3f}) {verb} the baseline" in text
    assert "Folds evaluated: 0, 1, 3" in text
    assert "not a certified medical device" in text
    assert "Regression MSE" in text
    auroc = noisy_evaluation.triage_auroc
    assert list(auroc.index) == [0, 1, 3] and list(auroc.columns) == list(ev.TRIAGE_SCORES)
    triage = text[text.index("## Reading order: AUROC for any finding"):]
    mean, std = auroc[ev.TRIAGE_SCORES[0]].mean(), auroc[ev.TRIAGE_SCORES[0]].std(ddof=1)
    assert f"| mean | {mean:.3f} ± {std:.3f} |" in triage
    assert headline["triage_any_finding_auroc"] == pytest.approx(mean)

    raw = paths["json"].read_text()
    assert "NaN" not in raw
    document = json.loads(raw)
    assert document["headline"] == headline
    for name in ev.SETTINGS + ev.TABLE4:
        for part in ("mean", "std"):
            table = pd.DataFrame.from_dict(document["tables"][name][part], orient="index").astype(float)
            expected = getattr(noisy_evaluation, part)[name]
            np.testing.assert_allclose(table.loc[expected.index, expected.columns].to_numpy(), expected.to_numpy(float),
                                       equal_nan=True)
    for fold in noisy_evaluation.fold_evaluations:
        saved = document["folds"][str(fold.fold)]
        assert saved["regression_mse"] == fold.regression_mse
        assert saved["tables"]["R4"][MEAN_ROW]["f1"] == fold.tables["R4"].loc[MEAN_ROW, "f1"]
        assert document["per_fold_mean_f1"][str(fold.fold)]["R4"] == fold.tables["R4"].loc[MEAN_ROW, "f1"]
    assert document["regression"]["mse"] == {"mean": noisy_evaluation.regression_mse,
                                              "std": noisy_evaluation.regression_mse_std}
