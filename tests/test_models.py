"""ScanNet: shapes, the in-graph preprocessing, and every way of initialising the backbone."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from clare_dist.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelConfig,
    ScanNet,
    WeightsError,
    build_model,
    load_backbone_from,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scans(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, size, size), dtype=np.uint8))


@pytest.mark.parametrize(
    ("backbone", "head", "outputs"),
    [("resnet18", "regression", 2), ("resnet18", "classification", 5), ("resnet50", "regression", 2)],
)
def test_output_shape_per_backbone_and_head(backbone, head, outputs):
    model = build_model(ModelConfig(backbone=backbone, head=head)).eval()
    with torch.inference_mode():
        out = model(scans(3))
    assert out.shape == (3, outputs)
    assert out.dtype == torch.float32


def test_uint8_and_float_input_give_the_same_output():
    model = build_model(ModelConfig(backbone="resnet18")).eval()
    x = scans(2)
    with torch.inference_mode():
        assert torch.equal(model(x), model(x.float()))


def test_in_model_preprocessing_equals_torchvision_transforms():
    image = np.array([[0, 255, 128, 7], [64, 32, 200, 1], [9, 99, 199, 250], [3, 30, 60, 90]], dtype=np.uint8)
    torchvision_style = transforms.Compose(
        [
            transforms.Grayscale(num_output_channels=3),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    manual = torchvision_style(Image.fromarray(image))
    got = ScanNet("resnet18").preprocess(torch.from_numpy(image)[None, None])
    assert got.shape == (1, 3, 4, 4)
    torch.testing.assert_close(got[0], manual, rtol=0, atol=1e-6)
    # Known answers: black is -mean/std and white is (1 - mean)/std in every channel.
    for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        assert got[0, channel, 0, 0].item() == pytest.approx(-mean / std, abs=1e-6)
        assert got[0, channel, 0, 1].item() == pytest.approx((1 - mean) / std, abs=1e-6)


def test_forward_is_preprocess_then_backbone():
    model = build_model(ModelConfig(backbone="resnet18")).eval()
    x = scans(2)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), model.backbone(model.preprocess(x)), rtol=0, atol=0)


def test_wrong_input_shape_is_refused():
    with pytest.raises(ValueError, match="N×1×H×W"):
        ScanNet("resnet18")(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "vgg16"}, "backbone must be one of"),
        ({"head": "softmax"}, "head must be one of"),
        ({"weights": "resnet.onnx"}, "weights must be None, 'imagenet' or the path"),
    ],
)
def test_config_rejects_bad_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_load_backbone_from_copies_everything_but_the_head():
    torch.manual_seed(0)
    classifier = build_model(ModelConfig(backbone="resnet18", head="classification"))
    torch.manual_seed(1)
    regressor = build_model(ModelConfig(backbone="resnet18", head="regression"))
    head_before = {k: v.clone() for k, v in regressor.state_dict().items() if k.startswith("backbone.fc.")}

    copied, skipped = load_backbone_from(regressor, classifier.state_dict())

    assert skipped == ["backbone.fc.bias", "backbone.fc.weight"]
    target, source = regressor.state_dict(), classifier.state_dict()
    assert set(copied) == set(target) - set(head_before)
    for name in copied:
        assert torch.equal(target[name], source[name]), name
    for name, before in head_before.items():
        assert torch.equal(target[name], before), name


def test_load_backbone_from_refuses_another_backbone():
    with pytest.raises(WeightsError, match="do not fit a resnet18"):
        load_backbone_from(ScanNet("resnet18"), ScanNet("resnet50").state_dict())


def test_local_torchvision_weights_file(tmp_path):
    torch.manual_seed(3)
    source = torchvision.models.resnet18(weights=None)  # a torchvision state dict: no prefix, 1000-class fc
    path = tmp_path / "resnet18-site.pth"
    torch.save(source.state_dict(), path)

    model = build_model(ModelConfig(backbone="resnet18", weights=str(path)))

    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert model.backbone.fc.out_features == 2


def test_local_clare_checkpoint_file(tmp_path):
    torch.manual_seed(4)
    baseline = build_model(ModelConfig(backbone="resnet18", head="classification"))
    path = tmp_path / "last.pt"
    torch.save({"model": baseline.state_dict(), "epoch": 3}, path)

    model = build_model(ModelConfig(backbone="resnet18", weights=str(path)))

    assert torch.equal(model.backbone.layer1[0].conv1.weight, baseline.backbone.layer1[0].conv1.weight)


def test_missing_or_foreign_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="no weights file at"):
        build_model(ModelConfig(backbone="resnet18", weights=str(tmp_path / "absent.pt")))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="is not a PyTorch weights file"):
        build_model(ModelConfig(backbone="resnet18", weights=str(junk)))


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("network blocked in this test")


def test_imagenet_without_cache_or_network_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)  # never a real download attempt
    with pytest.raises(WeightsError) as caught:
        build_model(ModelConfig(backbone="resnet18", weights="imagenet"))
    message = str(caught.value)
    assert "network blocked" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "weights='/path/to/resnet18-f37072fd.pth'" in message


def test_imagenet_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """A site that placed the weights in the hub cache gets them through torchvision's API."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    torch.manual_seed(5)
    cached = torchvision.models.resnet18(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(cached.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")

    model = build_model(ModelConfig(backbone="resnet18", weights="imagenet"))

    assert torch.equal(model.backbone.conv1.weight, cached.conv1.weight)
