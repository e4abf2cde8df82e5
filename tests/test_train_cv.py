"""`clare-dist train` on Ray: 5 folds, 2 at a time, killed mid-run and resumed, then evaluated and bundled."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from clare_dist.bundle import load_bundle
from clare_dist.runtime import open_session, run_regressor
from clare_dist.scans import ScanConfig, preprocess_scan


def _train_command(tiny_archive, reference_dir, run, ray_address):
    return [
        sys.executable, "-m", "clare_dist", "train",
        "--labels", str(tiny_archive / "prepared" / "labels.parquet"), "--images", str(tiny_archive / "archive"),
        "--references", str(reference_dir), "--out", str(run), "--backbone", "resnet18", "--image-size", "48",
        "--epochs", "2", "--batch-size", "16", "--learning-rate", "1e-3", "--loader-workers", "0",
        "--max-concurrent", "2", "--address", ray_address,
    ]


def _histories(run):
    return {p.relative_to(run).as_posix(): json.loads(p.read_text()) for p in run.glob("fold_*/*/history.json")}


@pytest.fixture(scope="module")
def trained_run(tiny_archive, reference_dir, ray_address, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    command = _train_command(tiny_archive, reference_dir, run, ray_address)
    log = open(run.parent / "train-first.log", "w")
    first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 420
    while not list(run.glob("fold_*/done.json")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in run.glob("fold_*/done.json")}
    histories_before = _histories(run)
    assert 1 <= len(done_before) < 5, f"the run must be cut off mid-way; see {log.name}"

    second = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return run, done_before, histories_before, second.stdout


def test_rerun_finishes_without_redoing_folds_or_epochs(trained_run):
    run, done_before, histories_before, _ = trained_run
    assert sorted(p.parent.name for p in run.glob("fold_*/done.json")) == [f"fold_{k}" for k in range(5)]
    for fold, stamp in done_before.items():
        assert (run / fold / "done.json").stat().st_mtime_ns == stamp  # finished folds were not touched
    after = _histories(run)
    for name, history in after.items():
        epochs = [h["epoch"] for h in history]
        assert epochs == list(range(len(epochs))), f"{name} repeated or skipped an epoch: {epochs}"
        assert history[: len(histories_before.get(name, []))] == histories_before.get(name, [])


def test_evaluation_tables_and_pictures(trained_run):
    run, _, _, printed = trained_run
    assert "Table 2" in printed and "Table 3" in printed and "Table 4" in printed
    document = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert document["headline"]["folds"] == [0, 1, 2, 3, 4]
    for name in ("evaluation.md", "fig4_predictions.png", "roc_pr.png"):
        assert (run / "evaluation" / name).stat().st_size > 1000


def test_bundle_loads_and_its_graph_reproduces_the_fold_predictions(trained_run, tiny_archive):
    import pandas as pd

    run = trained_run[0]
    bundle = load_bundle(run / "bundle")
    assert bundle.manifest["folds"] == [0] and bundle.image_size == 48
    assert bundle.manifest["metrics"]["onnx_max_abs_diff"] <= 1e-4
    predictions = pd.read_parquet(run / "fold_0" / "predictions.parquet").head(8)
    scans = np.stack([
        preprocess_scan(tiny_archive / "archive" / "images" / name, ScanConfig(size=48))
        for name in predictions["image_index"]
    ])
    coords = run_regressor(open_session(bundle.onnx_path, prefer_gpu=False), scans).coords
    assert np.abs(coords - predictions[["x", "y"]].to_numpy()).max() < 1e-4
