"""One preprocessing per model: training, the batch job and serving make the same input from a
scan with the bundle's preprocessing, and a run set to another one is refused."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper
from PIL import Image

from conftest import SAMPLE, missing_shared

from clare_dist.batch import decode_batch
from clare_dist.bundle import Bundle, write_bundle
from clare_dist.dataset import ScanDataset
from clare_dist.labels import COMBINATIONS
from clare_dist.rules import References
from clare_dist.run_export import check_images, run_preprocessing
from clare_dist.scans import ScanConfig, preprocess_scan
from clare_dist.scans.preprocessing import PREPROCESSINGS, PreprocessingMismatchError
from clare_dist.scan_workers import ScanWorkers
from clare_dist.screening import Screener
from clare_dist.synth import encode_dx
from clare_dist.training import TrainConfig

SIZE = 64


def regressor(path: Path) -> Path:
    """An ONNX graph with the bundle's contract: the mean gray level twice, as the coordinates."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["scan"], ["scan_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["scan_f"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["mean", "one"], ["column"]),
            helper.make_node("Concat", ["column", "column"], ["coords"], axis=1),
        ],
        "mean",
        [helper.make_tensor_value_info("scan", TensorProto.UINT8, [None, 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("coords", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor("one", TensorProto.INT64, [1], [1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def bundle_of(tmp_path: Path, preprocessing_id: str) -> Bundle:
    references = References.from_mapping({name: (i % 6 / 5, i // 6 / 4) for i, name in enumerate(COMBINATIONS)})
    (tmp_path / "references.json").write_text(
        json.dumps({"format_version": 1, "order": list(COMBINATIONS), "references": references.to_mapping()})
    )
    return write_bundle(tmp_path / "bundle", regressor(tmp_path / "r.onnx"), tmp_path / "references.json",
                        backbone="resnet18", image_size=SIZE, folds=[0], ensemble=False, metrics={},
                        preprocessing_id=preprocessing_id)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[Path]:
    """A real 1024² PNG, the same as a JPEG, and a 12-bit DX DICOM of it at 2048², as files."""
    original = SAMPLE / "images-original" / "00000001_000.png"
    if not original.is_file():
        missing_shared("the real CXR14 originals", original)
    folder = tmp_path_factory.mktemp("scans")
    pixels = np.asarray(Image.open(original))
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, format="JPEG", quality=90)
    big = np.asarray(Image.fromarray(pixels).resize((2048, 2048), Image.Resampling.BICUBIC)).astype(np.uint16) * 16
    files = {"scan.png": original.read_bytes(), "scan.jpg": jpeg.getvalue(), "scan.dcm": encode_dx(big, 12)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


@pytest.mark.parametrize("preprocessing_id", sorted(PREPROCESSINGS))
def test_training_batch_and_serving_make_the_same_input(tmp_path, scans, preprocessing_id):
    bundle = bundle_of(tmp_path, preprocessing_id)
    config = TrainConfig(image_size=SIZE, preprocessing=preprocessing_id)
    assert run_preprocessing(asdict(config)) == preprocessing_id  # what the run's done.json gives the export

    training = np.stack([ScanDataset(scans, np.zeros((len(scans), 2)), SIZE, preprocessing=config.preprocessing)[i][0][0]
                         for i in range(len(scans))])
    batch = decode_batch({"scan_id": np.array([p.name for p in scans], dtype=object),
                          "path": np.array([str(p) for p in scans], dtype=object)}, bundle.scan_config(ScanConfig()))
    assert list(batch["status"]) == ["ok"] * len(scans)
    screener = Screener(bundle, threads=1)
    served = np.stack([preprocess_scan(p.read_bytes(), screener.scan_config) for p in scans])
    workers = ScanWorkers(bundle.onnx_path, bundle.scan_config(ScanConfig()), workers=1)
    try:
        by_workers = [workers.submit(p.read_bytes()).result(timeout=60) for p in scans]
    finally:
        workers.close()
    table = pd.DataFrame({"image_index": [p.name for p in scans]})  # check_images takes them by name: dcm, jpg, png
    exported = np.stack(check_images(table, scans[0].parent, SIZE, preprocessing=run_preprocessing(asdict(config))))[::-1]

    expected = np.stack([preprocess_scan(p, ScanConfig(size=SIZE, preprocessing=preprocessing_id)) for p in scans])
    for made in (training, batch["scan"], served, exported):
        np.testing.assert_array_equal(made, expected)
    means = expected.reshape(len(scans), -1).mean(axis=1)
    np.testing.assert_allclose([r.coords[0] for r in by_workers], means, rtol=1e-5)  # the workers regressed that input
    assert screener.screen([scans[0]])[0].x == pytest.approx(means[0], rel=1e-5)


def test_the_two_preprocessings_differ(scans):
    """Otherwise the identity above would prove nothing about which one was used."""
    area, lanczos = (preprocess_scan(scans[0], ScanConfig(size=SIZE, preprocessing=p)) for p in ("area/1", "lanczos/1"))
    assert np.abs(area.astype(int) - lanczos.astype(int)).max() > 0


def test_a_run_set_to_another_preprocessing_is_refused(tmp_path):
    bundle = bundle_of(tmp_path, "lanczos/1")
    with pytest.raises(PreprocessingMismatchError, match="was trained on scans preprocessed with 'lanczos/1'"):
        Screener(bundle, threads=1, limits=ScanConfig(preprocessing="area/1"))
    assert Screener(bundle, threads=1).scan_config.preprocessing == "lanczos/1"


def test_runs_from_before_the_preprocessing_was_recorded_export_the_legacy_one():
    settings = asdict(TrainConfig())
    del settings["preprocessing"]
    assert run_preprocessing(settings) == "lanczos/1"
    assert run_preprocessing(asdict(TrainConfig())) == "area/1"
