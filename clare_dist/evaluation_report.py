"""The report of a run's evaluation: Tables 2-4 in Markdown laid out like the paper, every number
as JSON, Fig. 4 and the baseline's ROC/PR curves, written into the run's `evaluation/`.

The numbers come from `evaluation.py`; this module only lays them out and draws them (with
matplotlib, which is why it is apart: training imports the numbers' contract, not this).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from clare_dist import metrics
from clare_dist.atomic import write_text_atomic
from clare_dist.evaluation import (
    AT_R4_PRECISION,
    AT_R4_RECALL,
    BASELINES,
    FAIR_BASELINES,
    KNN,
    KNN_K,
    PROBABILITY_COLUMNS,
    RULE_SETTINGS,
    SETTINGS,
    TABLE4,
    TRIAGE_SCORES,
    RunEvaluation,
    finite_or_none,
)
from clare_dist.labels import CLASSES
from clare_dist.ood_evaluation import ID_TARGET, OUTLIER_TARGET
from clare_dist.ood_evaluation import OUTLIERS as OOD_OUTLIERS
from clare_dist.ood_evaluation import TEST as OOD_TEST
from clare_dist.plots import predictions_by_combination_figure, roc_pr_figure, save_figure
from clare_dist.result import INTENDED_USE
from clare_dist.rules import apply_rules, layout_check, self_inconsistent
from clare_dist.runs import EVALUATION_FILES

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


_METRIC_LABELS = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F1"}


def _cells(evaluation: RunEvaluation, name: str) -> pd.DataFrame:
    return metrics.format_mean_std(evaluation.mean[name], evaluation.std[name])


def _paired_table(evaluation: RunEvaluation, settings: Sequence[str]) -> pd.DataFrame:
    """Metric-major columns with one sub-column per setting, as the paper lays out Tables 2-3."""
    cells = {s: _cells(evaluation, s) for s in settings}
    table = pd.DataFrame({f"{label} {s}": cells[s][metric] for metric, label in _METRIC_LABELS.items()
                          for s in settings})
    return table.rename_axis("Class")


def _table4(evaluation: RunEvaluation) -> pd.DataFrame:
    at_recall, at_precision = _cells(evaluation, AT_R4_RECALL), _cells(evaluation, AT_R4_PRECISION)
    columns = ["Recall (fixed by R4)", "Precision", "F1", "Precision (fixed by R4)", "Recall", "F1"]
    values = [at_recall["recall"], at_recall["precision"], at_recall["f1"],
              at_precision["precision"], at_precision["recall"], at_precision["f1"]]
    return pd.DataFrame(np.column_stack(values), index=at_recall.index, columns=columns).rename_axis("Class")


def _verdict(evaluation: RunEvaluation) -> str:
    """The plain answer to the paper's claim: did R4's mean F1 beat the baseline's? Fairly, then paper-style."""
    h = evaluation.headline
    f1 = {s: _cells(evaluation, s).loc[metrics.MEAN_ROW, "f1"] for s in ("R4", "B_PR", "B_ROC", *(FAIR_BASELINES if evaluation.fair else ()))}
    verb = {True: "beat", False: "did not beat"}
    paper = (f"R4's mean F1 ({f1['R4']}) {verb[h['r4_beats_baseline_pr']]} the baseline with PR thresholds (B_PR, "
             f"{f1['B_PR']}) and {verb[h['r4_beats_baseline_roc']]} the baseline with ROC thresholds (B_ROC, {f1['B_ROC']})")
    if not evaluation.fair:
        return f"**R4 against the baseline (paper-style, thresholds tuned on the test fold):** {paper}."
    return (f"**R4 against the baseline, fairly (thresholds fitted on the validation fold):** R4's mean F1 ({f1['R4']}) "
            f"{verb[h['r4_beats_fair_baseline_pr']]} the baseline with PR thresholds (B_PR_fair, {f1['B_PR_fair']}; "
            f"B_ROC_fair {f1['B_ROC_fair']}). Paper-style, with the thresholds tuned on the test fold: {paper}.")


def _layout_check(evaluation: RunEvaluation) -> str:
    """Whether a perfect regressor would be decided right: R4 at each reference's own point."""
    line = f"**Reference layout:** {layout_check(evaluation.references)}"
    if not self_inconsistent(evaluation.references):
        return f"{line}: a perfect regressor would be decided right for every combination."
    return f"{line}: scans of these combinations are decided wrong even by a perfect regressor."


def _fair_section(evaluation: RunEvaluation) -> list[str]:
    """The fair comparison first: every threshold fitted on the validation fold, scored on the test fold."""
    title = "## Fair protocol: the baseline's thresholds fitted on the validation fold"
    if not evaluation.fair:
        return [title, "Not available: this run's folds hold no validation predictions (they were trained before "
                       "clare-dist wrote them); retrain the folds for the fair figures. Only the paper-style tables, "
                       "whose thresholds are tuned on the test fold they are scored on, follow."]
    rows = {s: _cells(evaluation, s).loc[metrics.MEAN_ROW] for s in (*FAIR_BASELINES, "R4", KNN)}
    table = pd.DataFrame(rows).T[["precision", "recall", "f1"]].rename(columns=_METRIC_LABELS).rename_axis("Setting")
    diffs = {b: evaluation.paired_difference(b) for b in (*FAIR_BASELINES, "B_PR")}
    paired = pd.DataFrame({"R4 − baseline, mean F1": [metrics.format_mean_std(pd.DataFrame([[m]]), pd.DataFrame([[s]])).iloc[0, 0]
                                                     for m, s in diffs.values()]},
                          index=pd.Index(list(diffs), name="Baseline"))
    return [title,
            "Each fold's baseline thresholds (B_ROC_fair: max TPR − FPR; B_PR_fair: precision–recall break-even) are "
            "chosen on that fold's validation predictions (fold k + 1) and scored on its test fold, as R4, which has "
            "no threshold, is. These are the figures to compare; the paper-style Table 2 below tunes them on the test "
            "fold itself. Mean over the five classes, mean ± std over the folds:",
            metrics.to_markdown(table),
            "Paired per-fold differences (R4's mean F1 minus the baseline's, fold by fold):",
            metrics.to_markdown(paired)]


def evaluation_markdown(evaluation: RunEvaluation) -> str:
    """The report: Tables 2-4 laid out like the paper, mean ± std over folds, and the verdict."""
    folds = ", ".join(str(f) for f in evaluation.folds)
    n_images = evaluation.headline["images"]
    mse = metrics.format_mean_std(pd.DataFrame([[evaluation.regression_mse]]),
                                  pd.DataFrame([[evaluation.regression_mse_std]]), digits=4).iloc[0, 0]
    per_fold = evaluation.per_fold_f1.copy()
    per_fold.index = per_fold.index.astype(str)
    mse_table = pd.DataFrame({
        "Images": evaluation.mse_by_combination["images"],
        "MSE": metrics.format_mean_std(evaluation.mse_by_combination[["mean"]], evaluation.mse_by_combination[["std"]],
                                       digits=4)["mean"],
    }).rename_axis("Combination")
    parts = [
        "# CLARE-XR evaluation",
        f"Intended use: {INTENDED_USE}.",
        f"Folds evaluated: {folds} ({len(evaluation.folds)} of 5; {n_images:,} test images). "
        "Values are mean ± sample standard deviation (ddof=1) over the folds; MEAN is the unweighted "
        "mean of the five classes.",
        _verdict(evaluation),
        f"Regression MSE to the ground-truth reference coordinate: {mse}.",
        _layout_check(evaluation),
        *_fair_section(evaluation),
        "## Table 2 (paper-style). Baseline classifier (B_ROC: thresholds maximising TPR − FPR; "
        "B_PR: precision–recall break-even)",
        "Thresholds are chosen on each evaluated test fold itself, as the paper's Table 2 implies; "
        "this favours the baseline, so the comparison is conservative for CLARE-XR.",
        metrics.to_markdown(_paired_table(evaluation, BASELINES)),
        "## Table 3. CLARE-XR sets of rules R1-R4" + (", and the kNN decoder" if evaluation.fair else ""),
        metrics.to_markdown(_paired_table(evaluation, RULE_SETTINGS[:2])),
        metrics.to_markdown(_paired_table(evaluation, RULE_SETTINGS[2:] + ((KNN,) if evaluation.fair else ()))),
        *([f"kNN: each test point decided as the most frequent ground-truth combination among its {KNN_K} nearest "
           "validation-fold points (the fold's known cases; no test label is used)."] if evaluation.fair else []),
        "## Table 4. Baseline with recall or precision fixed by R4",
        "Per class, the baseline's threshold is moved to R4's recall (left) or precision (right) of the "
        "same fold; the fixed column shows the value the baseline reaches there (recall ≥ R4's; precision "
        "the closest it can reach).",
        metrics.to_markdown(_table4(evaluation)),
        "## Mean F1 per fold",
        metrics.to_markdown(per_fold),
        "## Regression MSE per ground-truth combination",
        metrics.to_markdown(mse_table),
        "## Reading order: AUROC for any finding",
        "How well each score puts scans with any finding before scans with none, on each test fold. The "
        "triage score (`clare_dist/triage.py`: the share of the way from the No Finding reference to the "
        "nearest abnormal one) orders the worklist of `clare-dist embed`; neither score has a threshold, so "
        "nothing here is chosen on the fold it is scored on.",
        metrics.to_markdown(_triage_table(evaluation)),
        *_ood_section(evaluation),
        f"Figures: `{EVALUATION_FILES['fig4']}` (test predictions per combination on the reference space, as the "
        f"paper's Fig. 4) and `{EVALUATION_FILES['roc_pr']}` (baseline ROC and PR curves pooled over the evaluated "
        "folds, with R4's operating point per class).",
    ]
    return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"


def _ood_section(evaluation: RunEvaluation) -> list[str]:
    """The "needs human review" flag: the share it flags of in-distribution scans and of outliers."""
    title = "## Needs human review: the out-of-distribution flag"
    ood = evaluation.ood
    if ood is None:
        return [title, "Not available: this run's folds hold no OOD scores (they were trained before clare-dist "
                       "fitted them); retrain the folds for these figures, and for a bundle that flags scans."]
    rows = ood.flagged.copy()
    rows.index = rows.index.astype(str)
    table = pd.concat([metrics.format_mean_std(rows * 100, rows * np.nan, digits=1),
                       metrics.format_mean_std(pd.DataFrame([ood.mean() * 100], index=["mean"]),
                                               pd.DataFrame([ood.std() * 100], index=["mean"]), digits=1)]).T
    table = table.rename_axis("Flagged scans (%)")
    verdict = "meets" if ood.meets_targets else "does not meet"
    mean = ood.mean()
    return [title,
            "A scan is flagged when its OOD score (the Mahalanobis distance of the regressor's penultimate features to "
            "the training images', in units of the threshold) is above 1. Each fold fitted the threshold on its "
            "validation fold so that at most 5 % of those scans are flagged, and is scored here on its test fold, which "
            "the fit never saw, and on outliers made of its first test scans (`clare_dist/synth/outliers.py`: rotated "
            "90°, inverted, nearly blank, nearly saturated, a heavy crop, noise, a gradient, a natural-looking texture). "
            f"Share flagged per fold, mean ± std over the folds; targets: at most {ID_TARGET:.0%} of the test scans, at "
            f"least {OUTLIER_TARGET:.0%} of the outliers.",
            metrics.to_markdown(table),
            f"**The flag {verdict} both targets:** {100 * mean[OOD_TEST]:.1f} % of in-distribution test scans and "
            f"{100 * mean[OOD_OUTLIERS]:.1f} % of the outliers are flagged for human review."]


def _triage_table(evaluation: RunEvaluation) -> pd.DataFrame:
    per_fold = evaluation.triage_auroc.astype(float)
    mean = pd.DataFrame([per_fold.mean()], index=["mean"])
    std = pd.DataFrame([per_fold.std(ddof=1)], index=["mean"]) if len(per_fold) > 1 else mean * np.nan
    rows = [metrics.format_mean_std(per_fold, per_fold * np.nan), metrics.format_mean_std(mean, std)]
    return pd.concat(rows)[list(TRIAGE_SCORES)].rename_axis("Fold")


def _table_json(table: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    return {str(row): {str(col): finite_or_none(v) for col, v in values.items()} for row, values in table.iterrows()}


def evaluation_document(evaluation: RunEvaluation) -> dict[str, Any]:
    """Every number of the report, machine-readable: mean and std apart, and each fold's own."""
    names = (*SETTINGS, *TABLE4)
    return {
        "format_version": FORMAT_VERSION,
        "intended_use": INTENDED_USE,
        "headline": evaluation.headline,
        "tables": {n: {"mean": _table_json(evaluation.mean[n]), "std": _table_json(evaluation.std[n])} for n in names},
        "per_fold_mean_f1": {str(f): {s: float(v) for s, v in row.items()}
                             for f, row in evaluation.per_fold_f1.iterrows()},
        "regression": {
            "mse": {"mean": evaluation.regression_mse, "std": finite_or_none(evaluation.regression_mse_std)},
            "by_combination": _table_json(evaluation.mse_by_combination.astype(float)),
        },
        "ood": None if evaluation.ood is None else evaluation.ood.to_json(),
        "folds": {
            str(e.fold): {
                "images": e.n_images,
                "thresholds": _table_json(e.thresholds),
                "tables": {n: _table_json(e.tables[n]) for n in SETTINGS}
                | {n: _table_json(e.table4[n]) for n in TABLE4},
                "regression_mse": e.regression_mse,
                "mse_by_combination": {str(k): float(v) for k, v in e.mse_by_combination.items()},
                "any_finding_auroc": {str(k): finite_or_none(v) for k, v in e.triage_auroc.items()},
            }
            for e in evaluation.fold_evaluations
        },
    }


def write_evaluation(evaluation: RunEvaluation, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write evaluation.md, evaluation.json, fig4_predictions.png and roc_pr.png into `out_dir`.

    The ROC/PR curves pool all evaluated folds' test images (each image is in exactly one test
    fold, so the pool is the evaluated data seen once); R4's pooled operating point per class
    is marked on them.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in EVALUATION_FILES.items()}
    write_text_atomic(paths["markdown"], evaluation_markdown(evaluation))
    write_text_atomic(paths["json"], json.dumps(evaluation_document(evaluation), indent=2, allow_nan=False) + "\n")

    data = evaluation.predictions
    coords = data[["x", "y"]].to_numpy(dtype=np.float64)
    save_figure(predictions_by_combination_figure(evaluation.references, coords, data["combination"].to_numpy()),
                paths["fig4"])
    folds = ", ".join(str(f) for f in evaluation.folds)
    save_figure(roc_pr_figure(data[list(CLASSES)].to_numpy(), data[PROBABILITY_COLUMNS].to_numpy(dtype=np.float64),
                              decision_bits=apply_rules(coords, evaluation.references).bits["r4"],
                              title=f"Baseline ROC / PR per class, pooled over test folds {folds} "
                                    f"({len(data):,} images); diamonds: CLARE-XR R4"),
                paths["roc_pr"])
    logger.info("evaluation written to %s", out)
    return paths
