"""The regressor as one ONNX graph, checked against torch before anyone can use it.

Serving and batch jobs run ONNX Runtime (`clare_dist.runtime`), not torch: it is about twice as
fast on CPU and needs no torch install. The graph takes what `scans.preprocess_scan` produces
(N×1×S×S uint8) and returns coordinates (N×2 float32); a fold ensemble is averaged inside the
same graph. Given the training archive's feature statistics, it also returns each scan's
out-of-distribution score (N float32, `clare_dist.ood`) from the same pass. An export is only
kept if ONNX Runtime reproduces torch on real scans, both outputs, so a silent exporter bug
cannot reach a hospital.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from clare_dist.atomic import atomic_path
from clare_dist.errors import ClareError
from clare_dist.models import ScanNet
from clare_dist.ood import OOD_OUTPUT, FeatureStatistics
from clare_dist.runtime import INPUT_NAME, OUTPUT_NAME, open_session, run_regressor

log = logging.getLogger(__name__)

OPSET = 17


class ExportError(ClareError, RuntimeError):
    """The exported graph does not reproduce the torch model; nothing was written."""


@dataclass(frozen=True)
class ExportReport:
    """What an export produced and how closely ONNX Runtime matched torch."""

    path: Path
    max_abs_diff: float
    n_images: int
    n_models: int
    opset: int
    seconds: float
    ood_max_rel_diff: float | None = None  # of the OOD score; None for a graph without it


class FoldEnsemble(nn.Module):
    """Mean of several regressors' coordinates: the fold-ensemble option of the export."""

    def __init__(self, models: Sequence[ScanNet]) -> None:
        super().__init__()
        if not models:
            raise ValueError("FoldEnsemble needs at least one model")
        self.members = nn.ModuleList(models)

    def forward(self, scans: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(scans) for member in self.members]).mean(dim=0)


class WithOODScore(nn.Module):
    """The coordinates (one regressor's, or the members' mean) and the OOD score of the first
    member's penultimate features, which also feed its head: one pass through it for both."""

    def __init__(self, models: Sequence[ScanNet], statistics: FeatureStatistics) -> None:
        super().__init__()
        if not models:
            raise ValueError("WithOODScore needs at least one model")
        self.members = nn.ModuleList(models)
        self.register_buffer("mean", torch.tensor(statistics.mean, dtype=torch.float32))
        self.register_buffer("whitening", torch.tensor(statistics.whitening, dtype=torch.float32))
        self.register_buffer("threshold", torch.tensor(statistics.threshold, dtype=torch.float32))

    def forward(self, scans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.members[0]
        features = first.features(scans)
        outputs = [first.backbone.fc(features)] + [member(scans) for member in self.members[1:]]
        coords = outputs[0] if len(outputs) == 1 else torch.stack(outputs).mean(dim=0)
        whitened = (features - self.mean) @ self.whitening
        return coords, whitened.square().mean(dim=1).sqrt() / self.threshold


def export_regressor(
    models: Sequence[ScanNet],
    path: str | os.PathLike,
    image_size: int,
    check_images: Sequence[np.ndarray],
    tolerance: float = 1e-4,
    statistics: FeatureStatistics | None = None,
) -> ExportReport:
    """Export one regressor (or the mean of several) to `path` and verify it on `check_images`.

    With `statistics` (the first model's training features, `clare_dist.ood`), the graph's second
    output is the OOD score, checked to `tolerance` relative to its size (1 at the threshold).

    `check_images` are uint8 image_size×image_size scans, ideally real ones: random noise
    exercises the arithmetic but not the value ranges that real anatomy produces. The graph is
    written next to `path` first and only moved there once the check passes, so a failed
    export leaves no file and never replaces a good one.
    """
    start = time.perf_counter()
    models = list(models)
    if not models:
        raise ValueError("export_regressor needs at least one model")
    heads = {model.head_name for model in models}
    if heads != {"regression"}:
        raise ValueError(f"only regression models can be exported as the regressor; got heads {sorted(heads)}")
    batch = _check_batch(check_images, image_size)
    # A CPU copy in eval mode: the caller's models stay where and as they are, and the reference
    # output is exact fp32 (cuDNN's TF32 convolutions would differ from ORT by more than 1e-4).
    if statistics is not None:
        module: nn.Module = WithOODScore(models, statistics)
    else:
        module = models[0] if len(models) == 1 else FoldEnsemble(models)
    module = copy.deepcopy(module).cpu().eval()
    target = Path(path)
    with atomic_path(target) as tmp:
        with torch.inference_mode():
            outputs = [module(b) for b in torch.from_numpy(batch).split(32)]
        expected = torch.cat([o[0] if statistics is not None else o for o in outputs]).numpy()
        _torch_export(module, tmp, image_size, with_ood=statistics is not None)
        onnx.checker.check_model(str(tmp))
        got = run_regressor(open_session(tmp, prefer_gpu=False), batch[:, 0])
        diff = float(np.abs(got.coords - expected).max())
        ood_diff = None
        if statistics is not None:
            scores = torch.cat([o[1] for o in outputs]).numpy()
            ood_diff = float((np.abs(got.ood_scores - scores) / np.maximum(1.0, np.abs(scores))).max())
        if not diff <= tolerance or not (ood_diff is None or ood_diff <= tolerance):  # also catches NaN
            raise ExportError(
                f"ONNX Runtime differs from torch by up to {diff:.3g} in the coordinates"
                f"{'' if ood_diff is None else f' and {ood_diff:.3g} in the OOD score'} on {len(batch)} check images, "
                f"over the tolerance of {tolerance:.3g}; the export was discarded. Check the torch/onnx/onnxruntime "
                "versions, or report the model and these numbers"
            )
    report = ExportReport(target, diff, len(batch), len(models), OPSET, time.perf_counter() - start, ood_diff)
    log.info("exported %d model(s) to %s in %.1f s; ORT vs torch max |diff| %.2g on %d images",
             report.n_models, target, report.seconds, diff, report.n_images)
    return report


def _check_batch(check_images: Sequence[np.ndarray], image_size: int) -> np.ndarray:
    if len(check_images) == 0:
        raise ValueError("export_regressor needs check images (real scans, preprocessed) to verify the graph")
    for i, image in enumerate(check_images):
        if image.shape != (image_size, image_size) or image.dtype != np.uint8:
            raise ValueError(
                f"check image {i} is {image.dtype} {image.shape}; expected uint8 ({image_size}, {image_size}) "
                "as scans.preprocess_scan produces"
            )
    return np.stack(check_images)[:, None]


def _torch_export(module: nn.Module, path: Path, image_size: int, with_ood: bool) -> None:
    """torch.onnx.export with the TorchScript exporter: the dynamo one needs onnxscript."""
    outputs = [OUTPUT_NAME, OOD_OUTPUT] if with_ood else [OUTPUT_NAME]
    example = torch.zeros(2, 1, image_size, image_size, dtype=torch.uint8)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in torch ≥ 2.9 but supported; say so once, not per export.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, module=r"torch\.onnx\._internal\.torchscript_exporter"
        )
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={INPUT_NAME: {0: "batch"}} | {name: {0: "batch"} for name in outputs},
        )
