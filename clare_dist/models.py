"""Phase II and the baseline: a torchvision ResNet that reads the resized 8-bit scan itself.

Every consumer (training, the ONNX export, batch and serving) feeds `ScanNet` the same thing:
an N×1×H×W uint8 tensor, the output of `scans.preprocess_scan`. Scaling to [0, 1], the
repeat to three channels and the ImageNet normalisation happen inside `forward`, so they are
traced into the exported graph and no consumer can get them wrong or out of step.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple

import torch
import torchvision
from torch import nn

from clare_dist.errors import ClareError

log = logging.getLogger(__name__)

BACKBONES: tuple[str, ...] = ("resnet50", "resnet18")
HEADS: dict[str, int] = {"regression": 2, "classification": 5}
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES: tuple[str, ...] = (".pt", ".pth")

_BUILDERS = {"resnet50": torchvision.models.resnet50, "resnet18": torchvision.models.resnet18}
# The best ImageNet weights torchvision publishes for each backbone.
_IMAGENET_WEIGHTS = {
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
}
# Where a clare-dist checkpoint keeps the model's state dict; a bare state dict is read as is.
_CHECKPOINT_KEYS = ("model", "state_dict")
_HEAD_PREFIX = "backbone.fc."


class WeightsError(ClareError, RuntimeError):
    """Initial weights that cannot be found or do not fit the backbone."""


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build; the defaults are the paper's regressor.

    `weights`: None (random init), "imagenet" (torchvision's weights API, from the torch hub
    cache or a download), or the path of a local .pt/.pth file — a torchvision state dict of the
    backbone or a clare-dist checkpoint. Only the backbone is initialised; the head is new.
    """

    backbone: str = "resnet50"
    head: str = "regression"
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"ModelConfig.backbone must be one of {BACKBONES}; got {self.backbone!r}")
        if self.head not in HEADS:
            raise ValueError(f"ModelConfig.head must be one of {tuple(HEADS)}; got {self.head!r}")
        if isinstance(self.weights, os.PathLike):
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if self.weights is not None and self.weights != "imagenet":
            if not isinstance(self.weights, str) or not self.weights.endswith(WEIGHT_SUFFIXES):
                raise ValueError(
                    f"ModelConfig.weights must be None, 'imagenet' or the path of a {'/'.join(WEIGHT_SUFFIXES)} "
                    f"file; got {self.weights!r}"
                )


class ScanNet(nn.Module):
    """ResNet with a regression (2 coordinates) or classification (5 logits) head.

    Input: N×1×H×W uint8, or a float tensor holding 0..255 (what augmentation produces).
    The normalisation constants are non-persistent buffers: they follow `.to(device)` but are
    not part of checkpoints, so a checkpoint is exactly the torchvision network's weights.
    """

    def __init__(self, backbone: str = "resnet50", head: str = "regression") -> None:
        super().__init__()
        ModelConfig(backbone=backbone, head=head)  # validates the names
        self.backbone_name = backbone
        self.head_name = head
        net = _BUILDERS[backbone](weights=None)
        net.fc = nn.Linear(net.fc.in_features, HEADS[head])
        self.backbone = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, scans: torch.Tensor) -> torch.Tensor:
        """N×1×H×W 0..255 → N×3×H×W ImageNet-normalised float, as torchvision's transforms do."""
        # The check is for eager callers; while exporting, the traced shape is fixed anyway.
        if not torch.jit.is_tracing() and (scans.ndim != 4 or scans.shape[1] != 1):
            raise ValueError(f"ScanNet takes N×1×H×W grayscale scans; got shape {tuple(scans.shape)}")
        # Broadcasting N×1×H×W against the 1×3×1×1 constants is the repeat to three channels,
        # and exports as two element-wise ops.
        return (scans.float() / 255.0 - self.mean) / self.std

    def features(self, scans: torch.Tensor) -> torch.Tensor:
        """The penultimate (pooled) features, N×D: what the head reads, and what the out-of-distribution
        score (`clare_dist.ood`) compares with the training archive's."""
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(self.preprocess(scans)))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return torch.flatten(net.avgpool(x), 1)

    def forward(self, scans: torch.Tensor) -> torch.Tensor:
        return self.backbone.fc(self.features(scans))  # torchvision's ResNet.forward, the features kept apart


class BackboneLoad(NamedTuple):
    """What `load_backbone_from` did: parameter/buffer names copied, and source names skipped."""

    copied: list[str]
    skipped: list[str]


def build_model(config: ModelConfig = ModelConfig()) -> ScanNet:
    """The network for `config`, its backbone initialised as `config.weights` says."""
    model = ScanNet(config.backbone, config.head)
    if config.weights == "imagenet":
        load_backbone_from(model, _imagenet_state_dict(config.backbone))
    elif config.weights is not None:
        load_backbone_from(model, read_state_dict(config.weights))
    log.info("built %s with a %s head (weights: %s)", config.backbone, config.head, config.weights or "random")
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a .pt/.pth file: a bare one, or a clare-dist checkpoint's "model" entry.

    Read with `weights_only=True`, so a file from elsewhere cannot run code on load.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"no weights file at {file}; check the path (it must be readable on this machine)")
    try:
        document = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on foreign or damaged files
        raise WeightsError(
            f"{file} is not a PyTorch weights file ({type(err).__name__}: {err}); pass a state dict saved with "
            "torch.save(model.state_dict(), path) or a clare-dist checkpoint"
        ) from err
    for key in _CHECKPOINT_KEYS:
        if isinstance(document, Mapping) and isinstance(document.get(key), Mapping):
            document = document[key]
            break
    if not isinstance(document, Mapping) or not all(isinstance(v, torch.Tensor) for v in document.values()):
        raise WeightsError(f"{file} holds no state dict (a mapping of names to tensors)")
    return dict(document)


def load_backbone_from(model: ScanNet, state_dict: Mapping[str, torch.Tensor]) -> BackboneLoad:
    """Copy every backbone tensor from `state_dict` into `model`, leaving the head (fc) as it is.

    This is how the paper initialises the regressor from the baseline classifier, and how
    ImageNet or site weights reach the backbone: the fc layer's shape differs between them.
    Keys may be ScanNet's ("backbone.conv1.weight"), torchvision's ("conv1.weight") or carry
    DistributedDataParallel's "module." prefix. Every non-head tensor of the model must be
    present with the right shape, otherwise nothing is copied and WeightsError says why.
    """
    source = {_scannet_key(name): tensor for name, tensor in state_dict.items()}
    target = model.state_dict()
    wanted = [name for name in target if not name.startswith(_HEAD_PREFIX)]
    missing = [name for name in wanted if name not in source]
    wrong = [
        f"{name} {tuple(source[name].shape)} vs {tuple(target[name].shape)}"
        for name in wanted
        if name in source and source[name].shape != target[name].shape
    ]
    if missing or wrong:
        raise WeightsError(
            f"the weights do not fit a {model.backbone_name}: {len(missing)} tensors missing "
            f"(e.g. {missing[:3]}), {len(wrong)} with another shape (e.g. {wrong[:3]}); "
            f"use weights saved from a {model.backbone_name}"
        )
    with torch.no_grad():
        for name in wanted:
            target[name].copy_(source[name])
    skipped = sorted(set(source) - set(wanted))
    log.info("copied %d backbone tensors; skipped %s", len(wanted), skipped)
    return BackboneLoad(copied=wanted, skipped=skipped)


def _scannet_key(name: str) -> str:
    name = name.removeprefix("module.")
    return name if name.startswith("backbone.") else f"backbone.{name}"


def _imagenet_state_dict(backbone: str) -> Mapping[str, torch.Tensor]:
    """torchvision's ImageNet weights: from the torch hub cache, else downloaded (hash-checked)."""
    weights = _IMAGENET_WEIGHTS[backbone]
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, OSError, hash mismatch, a damaged cached file, ...
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise WeightsError(
            f"ImageNet weights for {backbone} ({weights}) could not be loaded ({type(err).__name__}: {err}). "
            f"Without network access, download {weights.url} elsewhere and place it at {cached} "
            f"(the torch hub cache; set TORCH_HOME to move it), or pass weights='/path/to/{Path(weights.url).name}' "
            "to use a local file"
        ) from err
