"""One fold in plain torch: trains, predicts, and resumes after a kill without redoing epochs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from clare_dist.archive import MissingImagesError, index_images, locate
from clare_dist.dataset import ScanDataset
from clare_dist.evaluation import PREDICTION_COLUMNS
from clare_dist.reference_file import load_references
from clare_dist.runs import load_ood_statistics
from clare_dist.synth.outliers import OUTLIER_KINDS
from clare_dist.training import TrainConfig, train_fold

TINY = dict(backbone="resnet18", image_size=48, batch_size=16, num_workers=0, learning_rate=1e-3)

FOLD_SCRIPT = """
import sys, pandas as pd, torch
torch.set_num_threads(1)
from clare_dist.reference_file import load_references
from clare_dist.training import TrainConfig, train_fold
root, refs, out = sys.argv[1:4]
train_fold(0, pd.read_parquet(root + "/prepared/labels.parquet"), root + "/archive", load_references(refs), out,
           TrainConfig(epochs=3, patience=10, **{TINY!r}))
"""


def _history(path):
    return json.loads(path.read_text()) if path.exists() else []


@pytest.mark.slow
def test_a_killed_fold_resumes_without_redoing_epochs(tiny_archive, reference_dir, tmp_path):
    fold_dir = tmp_path / "fold_0"
    script = FOLD_SCRIPT.replace("{TINY!r}", repr(TINY))
    proc = subprocess.Popen([sys.executable, "-c", script, str(tiny_archive), str(reference_dir), str(fold_dir)])
    history_file = fold_dir / "baseline" / "history.json"
    deadline = time.time() + 240
    while len(_history(history_file)) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _history(history_file)
    assert 1 <= len(before) < 3, "the fold must be killed mid-phase for this test to mean anything"
    assert not (fold_dir / "done.json").exists()

    table = pd.read_parquet(tiny_archive / "prepared" / "labels.parquet")
    config = TrainConfig(epochs=3, patience=10, **TINY)
    path = train_fold(0, table, tiny_archive / "archive", load_references(reference_dir), fold_dir, config)

    after = _history(history_file)
    assert [h["epoch"] for h in after] == [0, 1, 2]
    assert after[: len(before)] == before  # the epochs done before the kill were kept, not redone
    assert [h["epoch"] for h in _history(fold_dir / "regressor" / "history.json")] == [0, 1, 2]

    predictions = pd.read_parquet(path)
    test_images = table[table["fold"] == 0]
    assert sorted(predictions["image_index"]) == sorted(test_images["image_index"])
    assert list(predictions.columns) == [*PREDICTION_COLUMNS, "ood_score"]
    assert predictions[["p_Ca", "p_Pa", "p_Pn", "p_Pl", "p_Ot"]].apply(lambda c: c.between(0, 1)).all().all()
    assert np.isfinite(predictions[["x", "y", "ood_score"]].to_numpy()).all()
    validation = pd.read_parquet(fold_dir / "validation_predictions.parquet")  # where the fair thresholds are fitted
    assert sorted(validation["image_index"]) == sorted(table.loc[table["fold"] == 1, "image_index"])
    assert list(validation.columns) == [*PREDICTION_COLUMNS, "ood_score"] and set(validation["fold"]) == {1}
    # The OOD threshold is fitted on the validation fold: at most 5 % of it lies above it.
    statistics = load_ood_statistics(fold_dir / "ood_statistics.npz")
    assert statistics.validation_images == len(validation) and (validation["ood_score"] > 1).mean() <= 0.05
    outliers = pd.read_parquet(fold_dir / "outlier_predictions.parquet")
    assert set(outliers["kind"]) == set(OUTLIER_KINDS) and set(outliers["image_index"]) <= set(predictions["image_index"])

    # A finished fold is not trained again: the call returns at once and changes nothing.
    stamp = os.stat(fold_dir / "done.json").st_mtime_ns
    started = time.perf_counter()
    assert train_fold(0, table, tiny_archive / "archive", load_references(reference_dir), fold_dir, config) == path
    assert time.perf_counter() - started < 5
    assert os.stat(fold_dir / "done.json").st_mtime_ns == stamp


@pytest.mark.slow
def test_early_stopping_stops_after_patience(tiny_archive, reference_dir, tmp_path):
    table = pd.read_parquet(tiny_archive / "prepared" / "labels.parquet")
    config = TrainConfig(epochs=6, patience=1, **{**TINY, "learning_rate": 0.5})
    train_fold(1, table, tiny_archive / "archive", load_references(reference_dir), tmp_path / "fold_1", config)
    history = _history(tmp_path / "fold_1" / "baseline" / "history.json")
    # With patience 1 the phase stops at its first epoch without a better validation loss.
    assert all(entry["improved"] for entry in history[:-1])
    assert len(history) == 6 or not history[-1]["improved"]
    assert (tmp_path / "fold_1" / "regressor" / "best.pt").exists()


def test_dataset_doubles_with_augmented_copies(tiny_archive):
    index = index_images(tiny_archive / "archive")
    paths = locate(sorted(index)[:4], index, tiny_archive)
    dataset = ScanDataset(paths, np.zeros((4, 2)), image_size=48, augment=True)
    assert len(dataset) == 8
    original, _ = dataset[1]
    copy, _ = dataset[5]
    assert original.shape == copy.shape == (1, 48, 48) and original.dtype == copy.dtype
    assert not np.array_equal(original.numpy(), copy.numpy())
    assert np.array_equal(dataset[1][0].numpy(), original.numpy())  # originals are not augmented


def test_missing_scans_are_named(tiny_archive):
    index = index_images(tiny_archive / "archive")
    with pytest.raises(MissingImagesError, match="1 of 2 scans"):
        locate([next(iter(index)), "99999999_000.png"], index, tiny_archive)
