"""Five-fold cross-validation on Ray Train: every requested fold in parallel, one GPU each.

Ray 2.60's pattern (Train V2): a Tune trial per fold is only the fan-out; each trial builds
and fits its own single-worker `TorchTrainer`, whose worker runs `clare_dist.training.
train_fold`. Progress and resumption live in the run directory (shared storage on a cluster):
folds with `done.json` are not launched again, and a fold that was cut off resumes at its
next epoch from its own checkpoint.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import pandas as pd
import ray
from ray import train, tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from clare_dist.reference_file import load_references
from clare_dist.runs import RAY_DIR, finished_folds, fold_dir, fold_name
from clare_dist.training import TrainConfig, train_fold

log = logging.getLogger(__name__)

# A trial only waits on its trainer; holding a whole CPU would starve the Train workers on a
# small machine (seen on 2 cores: WorkerGroupStartupTimeoutError). 0 is refused by Tune. The
# worker gets the rest of the fold's CPUs, so N folds of c CPUs fit exactly in N × c.
TRIAL_DRIVER_CPU = 0.01


def _train_worker(config: dict) -> None:
    """Runs inside the Ray Train worker: one fold, reporting each epoch to Ray."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    table = pd.read_parquet(config["labels"])
    references = load_references(config["references"])
    train_fold(
        config["fold"], table, config["images"], references, fold_dir(Path(config["run"]), config["fold"]),
        TrainConfig(**config["train"]), report=train.report,
    )


def _fold_trial(config: dict) -> None:
    """One Tune trial: a single-worker TorchTrainer for one fold."""
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=config,
        scaling_config=train.ScalingConfig(
            num_workers=1, use_gpu=config["use_gpu"],
            resources_per_worker={"CPU": config["cpus_per_fold"] - TRIAL_DRIVER_CPU},
        ),
        run_config=train.RunConfig(
            name=fold_name(config["fold"]),
            storage_path=str(Path(config["run"]) / RAY_DIR),
            failure_config=train.FailureConfig(max_failures=config["max_failures"]),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def pending_folds(run: Path, folds: Sequence[int]) -> list[int]:
    """The folds of `folds` without their `done.json`: to train, or to resume."""
    done = set(finished_folds(run))
    return [f for f in folds if f not in done]


def run_cross_validation(
    labels: Path, images: Path, references: Path, run: Path, config: TrainConfig,
    folds: Sequence[int] = (0, 1, 2, 3, 4), max_concurrent: int | None = None,
    cpus_per_fold: float = 1.0, max_failures: int = 2,
) -> list[int]:
    """Train the pending folds in parallel on the connected Ray cluster; returns the folds trained."""
    if cpus_per_fold <= TRIAL_DRIVER_CPU:
        raise ValueError(f"cpus_per_fold must be more than {TRIAL_DRIVER_CPU}; got {cpus_per_fold}")
    run = run.resolve()
    run.mkdir(parents=True, exist_ok=True)
    todo = pending_folds(run, folds)
    if not todo:
        log.info("all folds %s are already done in %s", list(folds), run)
        return []
    use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    if max_concurrent is None:
        capacity = ray.cluster_resources().get("GPU" if use_gpu else "CPU", 1)
        max_concurrent = max(1, int(capacity if use_gpu else capacity // cpus_per_fold))
    log.info("training folds %s (%d at a time, %s) into %s", todo, max_concurrent, "one GPU each" if use_gpu else "CPU", run)
    shared = {
        "labels": str(labels.resolve()), "images": str(images.resolve()), "references": str(references.resolve()),
        "run": str(run), "train": asdict(config), "use_gpu": use_gpu, "cpus_per_fold": cpus_per_fold,
        "max_failures": max_failures,
    }
    tuner = tune.Tuner(
        tune.with_resources(_fold_trial, {"cpu": TRIAL_DRIVER_CPU}),
        param_space={**shared, "fold": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name=f"cv-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(run / RAY_DIR)),
    )
    results = tuner.fit()
    failed = [r for r in results if r.error is not None]
    still = pending_folds(run, todo)
    if failed or still:
        reasons = "; ".join(f"{r.config.get('fold')}: {type(r.error).__name__}: {r.error}" for r in failed)
        raise RuntimeError(f"folds {still} did not finish ({reasons}); re-run the same command to resume them")
    return todo
