"""Evaluation of a cross-validation run, the numbers: the paper's Tables 2-4 and the regression MSE.

Input contract (written by the training code, one file per evaluated fold k):
`RUN/fold_{k}/predictions.parquet` (`runs.py` says where) holds fold k's *test* images with
`PREDICTION_COLUMNS`: the ground truth (`combination` and its five 0/1 class bits), the
regressor's predicted normalised coordinate (`x`, `y`) and the baseline classifier's five
sigmoid probabilities (`p_Ca` ... `p_Ot`). The references are `RUN/references.json`.

The core is pure: `evaluate_fold` turns one fold's predictions into its tables, `summarise`
turns the folds into mean ± std (sample std, ddof=1, over folds, as DESIGN.md §1 decides);
`evaluate_run` reads a run directory. The report of these numbers (Markdown, JSON, Fig. 4 and
the ROC/PR curves) is `evaluation_report.py`, apart because it draws with matplotlib, which the
training workers that import this module's contract must not load.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from clare_dist import metrics
from clare_dist.cxr14 import fold_split
from clare_dist.errors import ClareError
from clare_dist.labels import CLASSES, COMBINATION_INDEX, COMBINATION_VECTORS, COMBINATIONS
from clare_dist.ood_evaluation import OUTLIERS as OOD_OUTLIERS
from clare_dist.ood_evaluation import TEST as OOD_TEST
from clare_dist.ood_evaluation import OODFigures, ood_figures
from clare_dist.reference_file import load_references
from clare_dist.rules import References, apply_rules, pattern_names
from clare_dist.runs import PREDICTIONS_FILE, VALIDATION_PREDICTIONS_FILE, fold_dir, fold_dirs
from clare_dist.triage import triage_scores

logger = logging.getLogger(__name__)

PROBABILITY_COLUMNS: list[str] = [f"p_{code}" for code in CLASSES]
# A list, not a tuple, so that `df[PREDICTION_COLUMNS]` selects columns.
PREDICTION_COLUMNS: list[str] = ["image_index", "fold", "combination", *CLASSES, "x", "y", *PROBABILITY_COLUMNS]

BASELINES: tuple[str, ...] = ("B_ROC", "B_PR")
RULE_SETTINGS: tuple[str, ...] = ("R1", "R2", "R3", "R4")
SETTINGS: tuple[str, ...] = BASELINES + RULE_SETTINGS
# The fair protocol: the baseline's thresholds fitted on the fold's validation predictions, scored
# on its test fold (the paper-style B_ROC / B_PR fit them on the test fold itself).
FAIR_BASELINES: tuple[str, ...] = ("B_ROC_fair", "B_PR_fair")
# A decoder of the same points by their neighbours: the most frequent ground-truth combination among
# the KNN_K nearest validation-fold points (known cases whose labels the test fold never sees).
KNN = "kNN"
KNN_K = 9
FAIR_SETTINGS: tuple[str, ...] = FAIR_BASELINES + (KNN,)
AT_R4_RECALL = "B_at_R4_recall"
AT_R4_PRECISION = "B_at_R4_precision"
TABLE4: tuple[str, ...] = (AT_R4_RECALL, AT_R4_PRECISION)
# The rankings whose "any finding" AUROC is reported: CLARE-XR's triage score, and the baseline
# classifier's highest class probability (neither has a threshold to choose).
TRIAGE_SCORES: tuple[str, ...] = ("CLARE-XR triage score", "baseline max probability")


# ----------------------------------------------------------------------------- input contract


class PredictionsError(ClareError, ValueError):
    """A fold's predictions file that breaks the contract below; the message names the file and what is wrong."""


def validate_predictions(df: pd.DataFrame, fold: int | None = None) -> None:
    """Check one fold's predictions against the contract; raise PredictionsError saying what is wrong.

    Checks the columns and their types, that every row belongs to `fold` (any single fold
    when None), that the class bits are 0/1 and spell the row's `combination`, one of the 26,
    and that coordinates and probabilities are finite (probabilities in [0, 1]). Catching
    these here turns a training bug into one clear message instead of a wrong table.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise PredictionsError(f"predictions are missing columns {missing}; expected {PREDICTION_COLUMNS}")
    if df.empty:
        raise PredictionsError("predictions hold no rows")
    wrong = [f"{c} (string expected, got {df[c].dtype})" for c in ("image_index", "combination")
             if not pd.api.types.is_string_dtype(df[c])]
    wrong += [f"{c} (integer expected, got {df[c].dtype})" for c in ("fold", *CLASSES)
              if not (pd.api.types.is_integer_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))]
    wrong += [f"{c} (float expected, got {df[c].dtype})" for c in ("x", "y", *PROBABILITY_COLUMNS)
              if not pd.api.types.is_float_dtype(df[c])]
    if wrong:
        raise PredictionsError(f"predictions have columns of the wrong type: {', '.join(wrong)}")
    nulls = [c for c in PREDICTION_COLUMNS if df[c].isna().any()]
    if nulls:
        raise PredictionsError(f"predictions have missing values in columns {nulls}")
    folds = sorted(int(f) for f in df["fold"].unique())
    if (fold is None and len(folds) != 1) or (fold is not None and folds != [fold]):
        expected = "one fold" if fold is None else f"fold {fold}"
        raise PredictionsError(f"predictions must all belong to {expected}; found folds {folds}")
    bits = df[list(CLASSES)].to_numpy()
    if not np.isin(bits, (0, 1)).all():
        raise PredictionsError(f"class columns {list(CLASSES)} must hold only 0 and 1")
    unknown = sorted(set(df["combination"]) - set(COMBINATIONS))
    if unknown:
        raise PredictionsError(f"unknown combinations {unknown}; expected names from {list(COMBINATIONS)}")
    mismatched = df["combination"].to_numpy(dtype=object) != pattern_names(bits)
    if mismatched.any():
        raise PredictionsError(f"{int(mismatched.sum())} rows have class bits that do not spell their combination, "
                         f"e.g. image {df['image_index'].to_numpy()[mismatched][0]!r}")
    if not np.isfinite(df[["x", "y"]].to_numpy(dtype=float)).all():
        raise PredictionsError("coordinates x, y must be finite")
    probabilities = df[PROBABILITY_COLUMNS].to_numpy(dtype=float)
    if not (np.isfinite(probabilities) & (probabilities >= 0) & (probabilities <= 1)).all():
        raise PredictionsError(f"probabilities {PROBABILITY_COLUMNS} must lie in [0, 1]")


# ----------------------------------------------------------------------------- one fold


@dataclass(frozen=True)
class FoldEvaluation:
    """One test fold's numbers: Tables 2-4, the thresholds behind them, and the regression MSE.

    `tables` maps B_ROC, B_PR, R1..R4 to `metrics.class_metrics` tables (Tables 2 and 3);
    `table4` maps AT_R4_RECALL / AT_R4_PRECISION to the baseline's operating points there;
    `thresholds` is class × {B_ROC, B_PR} and, when the fold's validation predictions were given,
    FAIR_BASELINES (fitted there, scored here), which are in `tables` too.
    """

    fold: int
    n_images: int
    thresholds: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    table4: dict[str, pd.DataFrame]
    regression_mse: float
    mse_by_combination: pd.Series
    triage_auroc: pd.Series  # TRIAGE_SCORES -> AUROC for "any finding" on this fold

    @property
    def fair(self) -> bool:
        return all(name in self.tables for name in FAIR_SETTINGS)

    def mean_f1(self) -> pd.Series:
        """The MEAN-row F1 of every setting (B_ROC, B_PR, R1..R4, and the fair settings where fitted)."""
        names = SETTINGS + (FAIR_SETTINGS if self.fair else ())
        return pd.Series({s: float(self.tables[s].loc[metrics.MEAN_ROW, "f1"]) for s in names}, name=self.fold)


def evaluate_fold(predictions: pd.DataFrame, references: References,
                  validation: pd.DataFrame | None = None) -> FoldEvaluation:
    """Tables 2-4 and the regression MSE of one test fold.

    The baseline's thresholds (B_ROC: max TPR − FPR; B_PR: precision–recall break-even) are
    chosen on this evaluated fold's own test predictions, as the paper's Table 2 implies
    (its B_PR precision equals recall on the reported data). That lets the baseline tune on
    the data it is scored on, which favours it: the comparison is conservative for CLARE-XR,
    whose rules have no threshold. R1-R4 come from the predicted (x, y) alone. Table 4 moves
    the baseline's thresholds to R4's per-class recall and precision of this fold. The MSE is
    to the reference coordinate of each image's ground-truth combination.
    """
    validate_predictions(predictions)
    y_true = predictions[list(CLASSES)].to_numpy(dtype=np.int8)
    y_score = predictions[PROBABILITY_COLUMNS].to_numpy(dtype=np.float64)
    coords = predictions[["x", "y"]].to_numpy(dtype=np.float64)
    combinations = predictions["combination"].to_numpy(dtype=object)

    thresholds = {"B_ROC": metrics.roc_thresholds(y_true, y_score),
                  "B_PR": metrics.pr_break_even_thresholds(y_true, y_score)}
    if validation is not None:  # fitted on labels the test fold's scores never see
        validate_predictions(validation)
        v_true = validation[list(CLASSES)].to_numpy(dtype=np.int8)
        v_score = validation[PROBABILITY_COLUMNS].to_numpy(dtype=np.float64)
        thresholds |= {"B_ROC_fair": metrics.roc_thresholds(v_true, v_score),
                       "B_PR_fair": metrics.pr_break_even_thresholds(v_true, v_score)}
    tables = {name: metrics.class_metrics(y_true, metrics.binarize(y_score, t)) for name, t in thresholds.items()}
    if validation is not None:
        tables[KNN] = metrics.class_metrics(y_true, knn_decisions(coords, validation, KNN_K))
    rules = apply_rules(coords, references)
    tables.update({name: metrics.class_metrics(y_true, rules.bits[name.lower()]) for name in RULE_SETTINGS})
    r4 = tables["R4"]
    table4 = {AT_R4_RECALL: metrics.baseline_at_fixed_recall(y_true, y_score, r4["recall"]),
              AT_R4_PRECISION: metrics.baseline_at_fixed_precision(y_true, y_score, r4["precision"])}

    position = {name: i for i, name in enumerate(references.names)}
    target = references.coords[[position[c] for c in combinations]]
    triage = metrics.any_finding_auroc(y_true, {TRIAGE_SCORES[0]: triage_scores(coords, references),
                                                TRIAGE_SCORES[1]: y_score.max(axis=1)})
    return FoldEvaluation(
        fold=int(predictions["fold"].iloc[0]),
        n_images=len(predictions),
        thresholds=pd.DataFrame(thresholds, index=pd.Index(CLASSES, name="class")),
        tables=tables,
        table4=table4,
        regression_mse=metrics.regression_mse(coords, target),
        mse_by_combination=metrics.mse_by_combination(coords, target, combinations),
        triage_auroc=triage,
    )


def knn_decisions(coords: np.ndarray, known: pd.DataFrame, k: int) -> np.ndarray:
    """N×5 class bits: the most frequent ground-truth combination among the k known points nearest to
    each point (ties to the one whose nearest member is nearest)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(known))
    _, neighbours = NearestNeighbors(n_neighbors=k).fit(known[["x", "y"]].to_numpy(float)).kneighbors(coords)
    truth = known["combination"].to_numpy(dtype=object)[neighbours]
    decided = [max(dict.fromkeys(row), key=list(row).count) for row in truth]  # first seen wins a tie
    return COMBINATION_VECTORS[[COMBINATION_INDEX[c] for c in decided]].astype(np.int8)


# ----------------------------------------------------------------------------- all folds


@dataclass(frozen=True)
class RunEvaluation:
    """Mean ± std over the evaluated folds of every table, with the per-fold results kept.

    `mean[name]` / `std[name]` for name in SETTINGS + TABLE4; `per_fold_f1` is fold × SETTINGS
    (mean F1 per fold); `mse_by_combination` has columns mean, std (over the folds where the
    combination occurs) and images. `predictions` are all folds' rows, kept for the pictures.
    """

    folds: tuple[int, ...]
    fold_evaluations: tuple[FoldEvaluation, ...]
    mean: dict[str, pd.DataFrame]
    std: dict[str, pd.DataFrame]
    per_fold_f1: pd.DataFrame
    regression_mse: float
    regression_mse_std: float
    mse_by_combination: pd.DataFrame
    triage_auroc: pd.DataFrame  # fold × TRIAGE_SCORES
    predictions: pd.DataFrame
    references: References
    ood: OODFigures | None = None  # the "needs human review" flag's shares; None for a run trained before it

    @property
    def fair(self) -> bool:
        """Whether every evaluated fold had validation predictions to fit the fair thresholds on."""
        return all(name in self.mean for name in FAIR_SETTINGS)

    def paired_difference(self, baseline: str) -> tuple[float, float]:
        """R4's mean F1 minus `baseline`'s, fold by fold: the mean and sample std of the differences."""
        diff = self.per_fold_f1["R4"] - self.per_fold_f1[baseline]
        return float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else math.nan

    @property
    def headline(self) -> dict[str, Any]:
        """The numbers a model bundle's manifest and a reader want first; JSON-safe (nan → None)."""
        names = SETTINGS + (FAIR_SETTINGS if self.fair else ())
        f1 = {s: float(self.mean[s].loc[metrics.MEAN_ROW, "f1"]) for s in names}
        f1_std = {s: finite_or_none(self.std[s].loc[metrics.MEAN_ROW, "f1"]) for s in names}
        fair = {}
        if self.fair:
            mean, std = self.paired_difference("B_PR_fair")
            fair = {"fair_baseline_pr_mean_f1": f1["B_PR_fair"], "fair_baseline_pr_mean_f1_std": f1_std["B_PR_fair"],
                    "fair_baseline_roc_mean_f1": f1["B_ROC_fair"], "fair_baseline_roc_mean_f1_std": f1_std["B_ROC_fair"],
                    "fair_r4_minus_baseline_pr": mean, "fair_r4_minus_baseline_pr_std": finite_or_none(std),
                    "r4_beats_fair_baseline_pr": bool(f1["R4"] > f1["B_PR_fair"]), "knn_mean_f1": f1[KNN]}
        ood = {} if self.ood is None else {
            "ood_test_flagged": float(self.ood.mean()[OOD_TEST]), "ood_outliers_flagged": float(self.ood.mean()[OOD_OUTLIERS])}
        return fair | ood | {
            "r4_mean_f1": f1["R4"],
            "r4_mean_f1_std": f1_std["R4"],
            "baseline_pr_mean_f1": f1["B_PR"],
            "baseline_pr_mean_f1_std": f1_std["B_PR"],
            "baseline_roc_mean_f1": f1["B_ROC"],
            "baseline_roc_mean_f1_std": f1_std["B_ROC"],
            "r4_beats_baseline_pr": bool(f1["R4"] > f1["B_PR"]),
            "r4_beats_baseline_roc": bool(f1["R4"] > f1["B_ROC"]),
            "regression_mse": self.regression_mse,
            "regression_mse_std": finite_or_none(self.regression_mse_std),
            "triage_any_finding_auroc": finite_or_none(self.triage_auroc[TRIAGE_SCORES[0]].mean()),
            "baseline_max_p_any_finding_auroc": finite_or_none(self.triage_auroc[TRIAGE_SCORES[1]].mean()),
            "folds": list(self.folds),
            "images": int(sum(e.n_images for e in self.fold_evaluations)),
        }


def summarise(fold_evaluations: Sequence[FoldEvaluation], predictions: pd.DataFrame,
              references: References) -> RunEvaluation:
    """Combine per-fold evaluations into mean ± std over folds (sample std, ddof=1).

    `predictions` are the evaluated folds' rows together; they are kept for the pictures.
    """
    if not fold_evaluations:
        raise ValueError("no folds to summarise")
    evaluations = tuple(sorted(fold_evaluations, key=lambda e: e.fold))
    mean, std = {}, {}
    for name in SETTINGS + (FAIR_SETTINGS if all(e.fair for e in evaluations) else ()):
        mean[name], std[name] = metrics.mean_std([e.tables[name] for e in evaluations])
    for name in TABLE4:
        mean[name], std[name] = metrics.mean_std([e.table4[name] for e in evaluations])
    mse = np.array([e.regression_mse for e in evaluations])
    by_fold = pd.concat({e.fold: e.mse_by_combination for e in evaluations}, axis=1)
    by_fold = by_fold.loc[sorted(by_fold.index, key=COMBINATION_INDEX.__getitem__)]
    images = predictions["combination"].value_counts()
    return RunEvaluation(
        folds=tuple(e.fold for e in evaluations),
        fold_evaluations=evaluations,
        mean=mean,
        std=std,
        per_fold_f1=pd.DataFrame([e.mean_f1() for e in evaluations]).dropna(axis=1).rename_axis("fold"),
        regression_mse=float(mse.mean()),
        regression_mse_std=float(mse.std(ddof=1)) if len(mse) > 1 else math.nan,
        mse_by_combination=pd.DataFrame({"mean": by_fold.mean(axis=1), "std": by_fold.std(axis=1, ddof=1),
                                         "images": images.reindex(by_fold.index).astype(int)}),
        triage_auroc=pd.DataFrame({e.fold: e.triage_auroc for e in evaluations}).T.rename_axis("fold"),
        predictions=predictions,
        references=references,
    )


def evaluate_run(run_dir: str | os.PathLike, folds: Sequence[int] | None = None) -> RunEvaluation:
    """Evaluate `folds` of a run (default: every `fold_k` directory in it), from its files.

    Every fold directory must hold its predictions: a fold that is still training is an
    error, not silently skipped, so a report never covers fewer folds than it appears to.
    Pass `folds` to evaluate only the finished ones.
    """
    run = Path(run_dir)
    references = load_references(run)
    if folds is None:
        folds = fold_dirs(run)
        if not folds:
            raise FileNotFoundError(f"{run} has no fold_k directories with {PREDICTIONS_FILE}; train the run first")
    frames, evaluations = [], []
    for fold in folds:
        path = fold_dir(run, fold) / PREDICTIONS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"fold {fold} has no predictions: {path} is missing (is the fold still training? "
                                    f"pass folds=[...] to evaluate only finished folds)")
        frame = pd.read_parquet(path)
        validation_path = fold_dir(run, fold) / VALIDATION_PREDICTIONS_FILE
        validation = pd.read_parquet(validation_path) if validation_path.is_file() else None
        try:
            validate_predictions(frame, fold)
            if validation is not None:
                validate_predictions(validation, fold_split(fold).validation)
            evaluations.append(evaluate_fold(frame, references, validation))
        except PredictionsError as exc:
            raise PredictionsError(f"{path if validation is None else path.parent}: {exc}") from exc
        frames.append(frame[PREDICTION_COLUMNS])
        logger.info("fold %d: %d test images, R4 mean F1 %.3f", fold, len(frame),
                    evaluations[-1].mean_f1()["R4"])
    summary = summarise(evaluations, pd.concat(frames, ignore_index=True), references)
    return replace(summary, ood=ood_figures(run, summary.folds))


def finite_or_none(value: float) -> float | None:
    """A number for JSON: NaN and infinities (e.g. the std of one fold) become None."""
    return float(value) if math.isfinite(value) else None
