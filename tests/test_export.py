"""The ONNX regressor: ORT reproduces torch on real scans, ensembles average, bad exports vanish."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import sample_scans

from clare_dist import export, runtime
from clare_dist.export import ExportError, FoldEnsemble, export_regressor
from clare_dist.runtime import onnx_providers, open_session, run_regressor
from clare_dist.models import ModelConfig, build_model
from clare_dist.scans import ScanConfig, preprocess_scan

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def real_scans() -> np.ndarray:
    return np.stack([preprocess_scan(f, ScanConfig(size=SIZE)) for f in sample_scans(5)])


def regressors(n: int) -> list:
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(build_model(ModelConfig(backbone="resnet18")).eval())
    return models


def torch_coords(model: torch.nn.Module, scans: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(scans[:, None])).numpy()


@pytest.fixture(scope="module")
def single(tmp_path_factory, real_scans):
    model = regressors(1)[0]
    path = tmp_path_factory.mktemp("single") / "regressor.onnx"
    return model, export_regressor([model], path, SIZE, list(real_scans))


def test_single_model_matches_torch_on_real_scans(single, real_scans):
    model, report = single
    assert report.path.is_file() and report.n_models == 1 and report.n_images == 5 and report.opset == export.OPSET
    assert report.max_abs_diff <= 1e-4
    session = open_session(report.path, threads=1)
    for batch in (real_scans[:1], real_scans):  # batch of 1 and of 5: the batch axis is dynamic
        got = run_regressor(session, batch).coords
        assert got.shape == (len(batch), 2) and got.dtype == np.float32
        np.testing.assert_allclose(got, torch_coords(model, batch), rtol=0, atol=1e-4)


def test_graph_interface(single):
    graph = onnx.load(str(single[1].path), load_external_data=False).graph
    (scan,), (coords,) = graph.input, graph.output
    assert scan.name == "scan" and scan.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in scan.type.tensor_type.shape.dim] == ["batch", 1, SIZE, SIZE]
    assert coords.name == "coords" and coords.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in coords.type.tensor_type.shape.dim] == ["batch", 2]


def test_run_regressor_in_small_batches_equals_one_batch(single, real_scans):
    session = open_session(single[1].path, threads=1)
    whole = run_regressor(session, real_scans).coords
    np.testing.assert_allclose(run_regressor(session, real_scans, batch_size=2).coords, whole, atol=1e-6)
    assert run_regressor(session, real_scans[:0]).coords.shape == (0, 2)


def test_wrong_dtype_is_rejected_by_the_graph_and_by_run_regressor(single, real_scans):
    session = open_session(single[1].path, threads=1)
    with pytest.raises(Exception, match=r"tensor\(float\).*tensor\(uint8\)|Unexpected input data type"):
        session.run(["coords"], {"scan": real_scans[:, None].astype(np.float32)})
    with pytest.raises(ValueError, match="uint8"):
        run_regressor(session, real_scans.astype(np.float32))
    with pytest.raises(ValueError, match="takes 64×64 scans"):
        run_regressor(session, np.zeros((1, 32, 32), np.uint8))


def test_ensemble_is_the_mean_of_its_members(tmp_path, real_scans):
    members = regressors(3)
    report = export_regressor(members, tmp_path / "ensemble.onnx", SIZE, list(real_scans))
    assert report.n_models == 3 and report.max_abs_diff <= 1e-4
    expected = np.mean([torch_coords(m, real_scans) for m in members], axis=0)
    np.testing.assert_allclose(torch_coords(FoldEnsemble(members).eval(), real_scans), expected, atol=1e-6)
    session = open_session(report.path, threads=1)
    np.testing.assert_allclose(run_regressor(session, real_scans).coords, expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(run_regressor(session, real_scans[:1]).coords, expected[:1], rtol=0, atol=1e-4)


def test_mismatch_fails_the_export_and_leaves_no_file(tmp_path, real_scans, monkeypatch):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match=r"differs from torch by up to .* tolerance of -1"):
        export_regressor(regressors(1), path, SIZE, list(real_scans), tolerance=-1)
    assert list(tmp_path.iterdir()) == []

    def shifted(session, scans, batch_size=32):
        regression = run_regressor(session, scans, batch_size)
        return regression._replace(coords=regression.coords + 0.01)

    monkeypatch.setattr(export, "run_regressor", shifted)
    with pytest.raises(ExportError, match=r"differs from torch by up to 0\.01 in the coordinates .* tolerance of 0\.0001"):
        export_regressor(regressors(1), path, SIZE, list(real_scans))
    assert list(tmp_path.iterdir()) == []


def test_export_inputs_are_checked(tmp_path, real_scans):
    model = regressors(1)
    with pytest.raises(ValueError, match="needs check images"):
        export_regressor(model, tmp_path / "x.onnx", SIZE, [])
    with pytest.raises(ValueError, match=r"check image 0 is uint8 \(32, 32\)"):
        export_regressor(model, tmp_path / "x.onnx", SIZE, [np.zeros((32, 32), np.uint8)])
    classifier = build_model(ModelConfig("resnet18", head="classification"))
    with pytest.raises(ValueError, match="only regression models"):
        export_regressor([classifier], tmp_path / "x.onnx", SIZE, list(real_scans))
    assert not (tmp_path / "x.onnx").exists()


def test_export_leaves_the_callers_model_alone(tmp_path, real_scans):
    model = regressors(1)[0].train()
    export_regressor([model], tmp_path / "r.onnx", SIZE, list(real_scans[:2]))
    assert model.training


def test_providers_and_session_errors(tmp_path, monkeypatch):
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: both)
    assert onnx_providers() == both
    assert onnx_providers(prefer_gpu=False) == ["CPUExecutionProvider"]
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_providers() == ["CPUExecutionProvider"]

    with pytest.raises(FileNotFoundError, match="no ONNX model at"):
        open_session(tmp_path / "absent.onnx")
    (tmp_path / "notes.onnx").write_text("hello")
    with pytest.raises(ValueError, match="is not a loadable ONNX model"):
        open_session(tmp_path / "notes.onnx")
