"""The model bundle: written atomically, versioned by content, and refused with every reason."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from clare_dist.bundle import (
    BUNDLE_FORMAT_VERSION,
    INTENDED_USE,
    BundleError,
    load_bundle,
    model_version,
    write_bundle,
)
from clare_dist.export import export_regressor
from clare_dist.labels import COMBINATIONS
from clare_dist.models import ModelConfig, build_model
from clare_dist.rules import References
from clare_dist.scans import ScanConfig
from clare_dist.scans.preprocessing import PreprocessingMismatchError, UnknownPreprocessingError

SIZE = 32
METRICS = {"r4_mean_f1": 0.41, "baseline_mean_f1": 0.38}


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    """A tiny exported ResNet18 regressor, made once for the module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = list(np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE), dtype=np.uint8))
    path = tmp_path_factory.mktemp("onnx") / "regressor.onnx"
    export_regressor([build_model(ModelConfig(backbone="resnet18"))], path, SIZE, images)
    torch.set_num_threads(previous)
    return path


@pytest.fixture(scope="module")
def references_file(tmp_path_factory) -> Path:
    """A valid references.json in the format `save_references` writes (a 6×5 grid of points)."""
    grid = {name: (i % 6 / 5, i // 6 / 4) for i, name in enumerate(COMBINATIONS)}
    references = References.from_mapping(grid)
    path = tmp_path_factory.mktemp("refs") / "references.json"
    document = {"format_version": 1, "order": list(COMBINATIONS), "references": references.to_mapping()}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def write(out: Path, onnx_file: Path, references_file: Path, **overrides):
    settings = {"backbone": "resnet18", "image_size": SIZE, "folds": [0, 1], "ensemble": True, "metrics": METRICS}
    return write_bundle(out, onnx_file, references_file, **(settings | overrides))


@pytest.fixture
def bundle_dir(tmp_path, onnx_file, references_file) -> Path:
    write(tmp_path / "bundle", onnx_file, references_file)
    return tmp_path / "bundle"


def problems_of(path: Path) -> str:
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    return str(caught.value)


def edit_manifest(bundle: Path, **changes) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.update(changes)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_write_then_load_round_trips(tmp_path, onnx_file, references_file):
    out = tmp_path / "bundle"
    written = write(out, onnx_file, references_file, folds=[0, 1, 2], ensemble=False, data_hash="abc123")
    loaded = load_bundle(tmp_path / "bundle")

    for field in ("path", "manifest", "onnx_path", "model_version", "image_size", "preprocessing"):
        assert getattr(loaded, field) == getattr(written, field), field
    assert sorted(p.name for p in loaded.path.iterdir()) == ["manifest.json", "references.json", "regressor.onnx"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temporary directory left behind
    assert loaded.image_size == SIZE and loaded.onnx_path == tmp_path / "bundle" / "regressor.onnx"
    assert loaded.model_version == model_version(onnx_file, references_file)
    assert loaded.model_version.startswith("m-") and len(loaded.model_version) == 18
    original = References.from_mapping(json.loads(references_file.read_text())["references"])
    np.testing.assert_array_equal(loaded.references.coords, original.coords)
    manifest = loaded.manifest
    assert manifest["bundle_format_version"] == BUNDLE_FORMAT_VERSION
    assert manifest["backbone"] == "resnet18" and manifest["folds"] == [0, 1, 2] and manifest["ensemble"] is False
    assert manifest["metrics"] == METRICS and manifest["data_hash"] == "abc123"
    assert manifest["input"]["name"] == "scan" and manifest["input"]["shape"] == [None, 1, SIZE, SIZE]
    assert manifest["input"]["dtype"] == "uint8" and manifest["input"]["layout"] == "N1HW"
    assert {k: v for k, v in manifest["input"]["preprocessing"].items() if k != "description"} == {"name": "area", "version": 1}
    assert loaded.preprocessing == "area/1"
    assert manifest["output"] == {"name": "coords", "shape": [None, 2], "dtype": "float32"}
    assert manifest["intended_use"] == INTENDED_USE
    assert datetime.fromisoformat(manifest["created_at"]).utcoffset().total_seconds() == 0
    # importlib.metadata drops the local build tag that torch.__version__ carries ("+cu130").
    assert manifest["versions"]["torch"] == torch.__version__.split("+")[0]
    assert manifest["versions"]["onnx"] == onnx.__version__
    assert set(manifest["versions"]) == {"clare-dist", "torch", "torchvision", "onnx", "onnxruntime", "numpy"}


def test_model_version_is_stable_and_follows_the_regressor(tmp_path, bundle_dir, onnx_file, references_file):
    again = write(tmp_path / "again", onnx_file, references_file, folds=[0], metrics={})
    assert again.model_version == load_bundle(bundle_dir).model_version

    model = onnx.load(str(onnx_file))
    model.doc_string = "another model"
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    other = write(tmp_path / "other", changed, references_file)
    assert other.model_version != again.model_version


def test_rewriting_replaces_the_whole_bundle(bundle_dir, onnx_file, references_file):
    (bundle_dir / "index").mkdir()  # extra entries are allowed ...
    assert load_bundle(bundle_dir).model_version
    write(bundle_dir, onnx_file, references_file)
    assert not (bundle_dir / "index").exists()  # ... and belong to the model they were built for
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["bundle"]


def test_an_invalid_bundle_is_never_published(tmp_path, onnx_file, references_file):
    disagreement = r"input shape is \[None, 1, 64, 64\] but regressor.onnx's input shape is \[None, 1, 32, 32\]"
    with pytest.raises(BundleError, match=disagreement):
        write(tmp_path / "bundle", onnx_file, references_file, image_size=64)
    assert list(tmp_path.iterdir()) == []


def test_missing_directory(tmp_path):
    assert "the directory does not exist" in problems_of(tmp_path / "nowhere")


def test_manifest_missing(bundle_dir):
    (bundle_dir / "manifest.json").unlink()
    assert "manifest.json is missing" in problems_of(bundle_dir)


def test_manifest_not_json(bundle_dir):
    (bundle_dir / "manifest.json").write_text("{not json")
    assert "manifest.json is not valid JSON" in problems_of(bundle_dir)


def test_wrong_format_version_and_missing_keys(bundle_dir):
    edit_manifest(bundle_dir, bundle_format_version=99)
    assert "bundle_format_version 99" in problems_of(bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    del manifest["folds"], manifest["intended_use"]
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    assert "lacks the keys ['folds', 'intended_use']" in problems_of(bundle_dir)


def test_onnx_missing(bundle_dir):
    (bundle_dir / "regressor.onnx").unlink()
    assert "regressor.onnx is missing" in problems_of(bundle_dir)


def test_references_edited_after_bundling(bundle_dir):
    document = json.loads((bundle_dir / "references.json").read_text())
    document["references"]["Ca"] = [0.5, 0.5]
    (bundle_dir / "references.json").write_text(json.dumps(document))
    message = problems_of(bundle_dir)
    assert "the files were changed after bundling" in message
    assert "is invalid" not in message  # the edited references are themselves valid


def test_invalid_references(bundle_dir):
    (bundle_dir / "references.json").write_text(json.dumps({"format_version": 1, "references": {"Ca": [0, 0]}}))
    assert "references.json is invalid: references need exactly the 26 combinations" in problems_of(bundle_dir)


def test_input_size_disagreeing_with_the_graph(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["input"]["shape"] = [None, 1, 128, 128]
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    message = problems_of(bundle_dir)
    assert "input shape is [None, 1, 128, 128] but regressor.onnx's input shape is [None, 1, 32, 32]" in message


def test_the_preprocessing_trained_with_is_recorded_and_runs_with_the_bundle(tmp_path, onnx_file, references_file):
    bundle = write(tmp_path / "legacy", onnx_file, references_file, preprocessing_id="lanczos/1")
    assert load_bundle(bundle.path).preprocessing == "lanczos/1"
    assert bundle.manifest["input"]["preprocessing"]["name"] == "lanczos"
    limits = ScanConfig(max_pixels=1000, size=7)
    assert bundle.scan_config(limits) == ScanConfig(max_pixels=1000, size=SIZE, preprocessing="lanczos/1")
    assert bundle.scan_config(ScanConfig(preprocessing="lanczos/1")).preprocessing == "lanczos/1"
    with pytest.raises(PreprocessingMismatchError, match=r"was trained on scans preprocessed with 'lanczos/1', but this "
                                                         r"run is set to preprocess them with 'area/1'"):
        bundle.scan_config(ScanConfig(preprocessing="area/1"))
    with pytest.raises(UnknownPreprocessingError, match="unknown scan preprocessing 'box/3'"):
        write(tmp_path / "unknown", onnx_file, references_file, preprocessing_id="box/3")


def test_a_bundle_from_before_the_preprocessing_was_recorded_is_the_legacy_one(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["input"]["preprocessing"] = f"resize to {SIZE}×{SIZE} 8-bit grayscale (LANCZOS); scaling and ImageNet normalisation inside the graph"
    del manifest["input"]["in_graph"]
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(bundle_dir).preprocessing == "lanczos/1"
    assert load_bundle(bundle_dir).scan_config().preprocessing == "lanczos/1"


def test_a_preprocessing_this_version_lacks_is_refused(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["input"]["preprocessing"] = {"name": "area", "version": 2, "description": "from a newer clare-dist"}
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    assert ("manifest.json input.preprocessing: unknown scan preprocessing 'area/2'; this clare-dist has "
            "['area/1', 'lanczos/1']") in problems_of(bundle_dir)


def test_input_dtype_disagreeing_with_the_graph(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["input"]["dtype"] = "float32"
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    assert "input dtype is 'float32' but regressor.onnx's input dtype is 'uint8'" in problems_of(bundle_dir)


def test_onnx_not_a_model(bundle_dir):
    (bundle_dir / "regressor.onnx").write_bytes(b"\xff\x00garbage")
    message = problems_of(bundle_dir)
    assert "regressor.onnx is not a readable ONNX model" in message
    assert "the files were changed after bundling" in message


def test_every_problem_is_named_at_once(bundle_dir):
    (bundle_dir / "regressor.onnx").unlink()
    edit_manifest(bundle_dir, bundle_format_version=2)
    shutil.copy(bundle_dir / "manifest.json", bundle_dir / "manifest.json.bak")  # an unknown extra entry is ignored
    message = problems_of(bundle_dir)
    assert "regressor.onnx is missing" in message
    assert "bundle_format_version 2" in message
    assert "(2 problem(s))" in message and "manifest.json.bak" not in message
