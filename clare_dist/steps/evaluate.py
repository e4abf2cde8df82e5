"""A run's evaluation: the paper's tables and figures over its finished folds, written to the run."""

from __future__ import annotations

from pathlib import Path


def evaluate(run: Path, folds: list[int] | None = None):
    """Evaluate the run's folds (all finished ones unless given) and write its evaluation
    directory; returns (the evaluation, the paths written)."""
    from clare_dist.evaluation import evaluate_run
    from clare_dist.evaluation_report import write_evaluation
    from clare_dist.runs import EVALUATION_DIR

    evaluation = evaluate_run(run, folds)
    return evaluation, write_evaluation(evaluation, run / EVALUATION_DIR)
