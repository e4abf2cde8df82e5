"""The int8 regressor: calibrated on training folds, checked on the test fold, refused when decisions move."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from conftest import SAMPLE_IMAGES, sample_scans

from clare_dist import quantize
from clare_dist.bundle import load_bundle, write_bundle
from clare_dist.export import export_regressor
from clare_dist.labels import COMBINATIONS
from clare_dist.models import ModelConfig, build_model
from clare_dist.quantize import QuantizationError, quantize_regressor
from clare_dist.rules import References, apply_rules
from clare_dist.run_quantize import quantize_run_bundle
from clare_dist.runs import LABELS_FILE
from clare_dist.runtime import open_session, run_regressor
from clare_dist.scans import ScanConfig, preprocess_scan

SIZE = 64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scans() -> np.ndarray:
    return np.stack([preprocess_scan(f, ScanConfig(size=SIZE)) for f in sample_scans(24)])


@pytest.fixture(scope="module")
def references() -> References:
    return References.from_mapping({name: (i % 6 / 5, i // 6 / 4) for i, name in enumerate(COMBINATIONS)})


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, scans) -> Path:
    """An untrained ResNet18 whose head is scaled so real scans spread over the references."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", head="regression")).eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(scans[:, None]))
        fc = model.backbone.fc
        fc.weight.mul_((0.25 / out.std(0))[:, None])
        fc.bias.copy_((fc.bias - out.mean(0)) * 0.25 / out.std(0) + 0.5)
    path = tmp_path_factory.mktemp("fp32") / "regressor.onnx"
    export_regressor([model], path, SIZE, list(scans[:4]))
    return path


def test_an_int8_graph_that_keeps_the_decisions_is_written(tmp_path, fp32, scans, references, monkeypatch):
    monkeypatch.setattr(quantize, "MIN_R4_AGREEMENT", 0.5)
    out = tmp_path / "int8.onnx"
    report = quantize_regressor(fp32, out, list(scans[:12]), list(scans[12:]), references, "m-fp32")
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    expected = run_regressor(open_session(fp32, prefer_gpu=False), scans[12:]).coords
    got = run_regressor(open_session(out, prefer_gpu=False), scans[12:]).coords
    assert report.r4_agreement == np.mean(apply_rules(got, references).r4 == apply_rules(expected, references).r4)
    assert report.max_abs_coord_diff == pytest.approx(float(np.abs(got - expected).max()))
    assert 0 < report.max_abs_coord_diff < 0.25  # int8, not fp32 copied, and still near it
    assert report.calibration_scans == 12 and report.checked_scans == 12 and report.fp32_model_version == "m-fp32"
    entry = report.manifest_entry()
    assert entry["min_r4_agreement"] == 0.5 and entry["r4_agreement_with_fp32"] == report.r4_agreement


def test_an_int8_graph_below_the_agreement_is_refused_and_not_written(tmp_path, fp32, scans, references, monkeypatch):
    monkeypatch.setattr(quantize, "MIN_R4_AGREEMENT", 1.01)  # nothing can reach it
    out = tmp_path / "int8.onnx"
    with pytest.raises(QuantizationError, match=r"agree with fp32's on [\d.]+% of 12 held-out scans, under the 101% "
                                                r"required; it was discarded and the fp32 bundle kept"):
        quantize_regressor(fp32, out, list(scans[:12]), list(scans[12:]), references, "m-fp32")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_runs_bundle_becomes_int8_calibrated_on_training_folds(tmp_path, fp32, references, monkeypatch):
    monkeypatch.setattr(quantize, "MIN_R4_AGREEMENT", 0.5)
    run = tmp_path / "run"
    run.mkdir()
    names = sorted(p.name for p in SAMPLE_IMAGES.glob("*.png"))[:50]
    pd.DataFrame({"image_index": names, "fold": np.arange(len(names)) % 5}).to_parquet(run / LABELS_FILE)
    (tmp_path / "references.json").write_text(
        json.dumps({"format_version": 1, "order": list(COMBINATIONS), "references": references.to_mapping()}))
    bundle = write_bundle(run / "bundle", fp32, tmp_path / "references.json", backbone="resnet18", image_size=SIZE,
                          folds=[0], ensemble=False, metrics={"r4_mean_f1": 0.4}, data_hash="abc")
    int8 = quantize_run_bundle(run, SAMPLE_IMAGES, bundle, calibration_scans=8, check_scans=8)
    assert int8.path == bundle.path and load_bundle(int8.path).model_version == int8.model_version != bundle.model_version
    entry = int8.manifest["quantization"]
    assert entry["calibration_scans"] == 8 and entry["checked_scans"] == 8  # fold 0: test fold 0, training folds 2-4
    assert entry["fp32_model_version"] == bundle.model_version and entry["kind"].startswith("int8 static QDQ")
    kept = {k: v for k, v in bundle.manifest.items() if k not in ("model_version", "created_at")}
    assert {k: v for k, v in int8.manifest.items() if k not in ("model_version", "created_at", "quantization")} == kept
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(int8.onnx_path)).graph.node}
    assert sorted(p.name for p in run.iterdir()) == ["bundle", LABELS_FILE]  # no temporary files left
