"""The whole method on the embedded default: archive → references → 5 folds → bundle → screening.

Re-run with the same settings, it resumes: finished steps (archives, labels, references, folds,
the bundle, screened scans) are kept and the rest is done. Settings other than those a demo
directory was started with are refused rather than mixed in.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from clare_dist.atomic import write_json_atomic
from clare_dist.cxr14 import DATA_ENTRY_NAME, combination_counts, format_counts_table
from clare_dist.runs import LABELS_FILE, RunError
from clare_dist.steps.evaluate import evaluate
from clare_dist.steps.export import export
from clare_dist.steps.make_references import make_references
from clare_dist.steps.prepare import prepare
from clare_dist.steps.synthesize import synthesize

log = logging.getLogger(__name__)

SETTINGS_FILE = "demo.json"  # in the demo's directory: the settings a re-run must repeat to resume


@dataclass(frozen=True)
class DemoSettings:
    """What the demo draws and trains: small enough for a laptop's CPU in minutes. The recorded
    part (`recorded()`) is what a resumed run must repeat."""

    n_images: int = 500
    size: int = 48
    epochs: int = 3
    backlog: int = 120
    seed: int = 0
    backbone: str = "resnet18"
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 3
    embed_task_cpus: float = 0.25
    loss: str = "mse"

    def recorded(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in ("n_images", "size", "epochs", "backlog", "seed", "loss")}


def run_demo(out: Path, settings: DemoSettings, connect: Callable[[], None], say: Callable[[str], None] = log.info) -> Path:
    """Run (or resume) the demo in `out`; `connect` attaches to Ray before the first Ray step and
    `say` gets the lines a person reads. Returns the screened backlog's report."""
    from clare_dist.bundle import load_bundle
    from clare_dist.case_index import build_case_index
    from clare_dist.reference_file import REFERENCES_FILE
    from clare_dist.runs import BUNDLE_DIR, init_run
    from clare_dist.synth import write_broken_scans
    from clare_dist.training import TrainConfig

    if claim_demo_dir(out, settings.recorded()):
        say(f"resuming the demo in {out}: finished steps are kept")
    archive = _demo_archive(out / "archive", settings.n_images, settings.size, settings.seed)
    labels = out / "prepared" / LABELS_FILE
    table = pd.read_parquet(labels) if labels.exists() else prepare(archive / DATA_ENTRY_NAME, out / "prepared")
    say("Table 1 of the synthetic archive (images per combination):")
    say(format_counts_table(combination_counts(table)))
    if not (out / "references" / REFERENCES_FILE).exists():
        space = make_references(out / "references", seed=settings.seed)
        say(f"references: minimum distance {space.min_distance:.4f}, reconstruction MSE {space.reconstruction_mse:.3g}; "
            f"{space.layout_check}")

    run = out / "run"
    init_run(run, labels, out / "references")
    connect()
    from jobs.embed import EmbedSettings, run_embed
    from jobs.train_cv import run_cross_validation

    config = TrainConfig(backbone=settings.backbone, image_size=settings.size, epochs=settings.epochs,
                         batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                         patience=settings.patience, seed=settings.seed, num_workers=0, loss=settings.loss)
    run_cross_validation(run / LABELS_FILE, archive, run / REFERENCES_FILE, run, config)
    headline = evaluate(run)[0].headline
    bundle = load_bundle(run / BUNDLE_DIR) if (run / BUNDLE_DIR).is_dir() else export(run, archive, None, False)
    embedding = EmbedSettings(batch_size=settings.batch_size, task_cpus=settings.embed_task_cpus)
    labelled = run_embed(bundle.path, archive / "images", out / "labelled", embedding)
    indexed = build_case_index(bundle.path, labelled, table)

    backlog = _demo_archive(out / "backlog", settings.backlog, settings.size, settings.seed + 1)
    broken = write_broken_scans(backlog / "images")
    screened = run_embed(bundle.path, backlog / "images", out / "screened", embedding)
    counts = screened["status"].value_counts()
    say(f"cross-validation: {_comparison(headline)} — tables in {run / 'evaluation' / 'evaluation.md'}")
    say(f"model bundle {bundle.model_version} with {indexed} indexed cases: {bundle.path}")
    say(f"backlog: {len(screened)} scans ({len(broken)} broken on purpose): {counts.get('ok', 0)} screened, "
        f"{counts.get('error', 0)} failed with their reason, {int(screened['needs_review'].eq(True).sum())} flagged for "
        "human review")
    if "ood_test_flagged" in headline:
        say(f"needs human review: {100 * headline['ood_test_flagged']:.1f} % of in-distribution test scans and "
            f"{100 * headline['ood_outliers_flagged']:.1f} % of outliers made of them flagged (targets ≤ 5 %, ≥ 95 %)")
    say(f"results: {out.resolve() / 'screened' / 'results'}")
    report = out.resolve() / "screened" / "report.html"
    say(f"report: open {report} in a browser")
    return report


def claim_demo_dir(out: Path, recorded: dict[str, int]) -> bool:
    """Record the demo's settings in `out` (new or empty), or check a re-run's against those
    recorded: True when the same demo is resumed; other settings are refused, not mixed in."""
    record = out / SETTINGS_FILE
    if record.exists():
        before = json.loads(record.read_text())
        if before != recorded:
            changed = ", ".join(f"{name} {before.get(name)} -> {value}" for name, value in recorded.items()
                                if before.get(name) != value)
            raise RunError(f"{out} holds a demo run with other settings ({changed}); re-run with its settings "
                           "to resume it, or use a new --out")
        return True
    if out.is_dir() and any(out.iterdir()):
        raise RunError(f"{out} is not empty and holds no demo run; use a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, recorded)
    return False


def _demo_archive(root: Path, n_images: int, size: int, seed: int) -> Path:
    """The demo's synthetic archive at `root`: kept if complete, else (re)drawn — a half-written one
    is the demo's own, left by an interrupted run."""
    if (root / DATA_ENTRY_NAME).exists():
        log.info("keeping the finished archive %s", root)
        return root
    if root.exists():
        log.info("redrawing the half-written archive %s", root)
        shutil.rmtree(root)
    return synthesize(root, n_images, size, seed, dicom=False).root


def _comparison(headline: dict) -> str:
    """R4 against the baseline: fairly (thresholds from the validation fold) first, paper-style beside."""
    paper = f"baseline (PR) {headline['baseline_pr_mean_f1']:.3f} with thresholds tuned on the test fold (paper-style)"
    if "fair_baseline_pr_mean_f1" not in headline:
        return f"R4 mean F1 {headline['r4_mean_f1']:.3f}, {paper}"
    return (f"R4 mean F1 {headline['r4_mean_f1']:.3f} against the baseline (PR) {headline['fair_baseline_pr_mean_f1']:.3f} "
            f"with thresholds fitted on the validation fold (fair); {paper}")
