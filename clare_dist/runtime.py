"""ONNX Runtime for the regressor: opening a session and running scans through it, without torch.

Every consumer of a model bundle (`clare-dist predict`, the batch job's actors, the serving
replicas) runs the exported graph here. This module imports neither torch nor the exporter, so a
process that only screens never loads torch: that keeps replicas and Ray Data workers small and
quick to start. `clare_dist.export` uses the same functions to check an export against torch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from clare_dist.ood import OOD_OUTPUT

log = logging.getLogger(__name__)

INPUT_NAME = "scan"
OUTPUT_NAME = "coords"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def onnx_providers(prefer_gpu: bool = True) -> list[str]:
    """CUDA first where onnxruntime-gpu reports it, then the CPU (always there as the fallback)."""
    available = ort.get_available_providers()
    providers = [CUDA_PROVIDER, CPU_PROVIDER] if prefer_gpu and CUDA_PROVIDER in available else [CPU_PROVIDER]
    log.debug("onnxruntime providers available %s; asking for %s", available, providers)
    return providers


def open_session(path: str | os.PathLike, threads: int | None = None, prefer_gpu: bool = True,
                 spinning: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime session on the best provider; `threads` caps its intra-op threads.

    `spinning=False` stops idle intra-op threads from busy-waiting for work: right for a session
    that shares its cores with other stages (serving replicas, pipeline actors), where spinning
    threads take the CPU those stages need; a session that owns the machine is faster spinning.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no ONNX model at {file}; export one with export_regressor or point to a model bundle")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(file), sess_options=options, providers=onnx_providers(prefer_gpu))
    except Exception as err:  # onnxruntime raises its own pybind exception types (InvalidProtobuf, Fail, ...)
        raise ValueError(f"{file} is not a loadable ONNX model ({err}); re-export it") from err
    # onnxruntime-gpu lists CUDA even without a usable GPU and then falls back; log what runs.
    log.info("ONNX Runtime session for %s on %s", file.name, session.get_providers()[0])
    return session


class Regression(NamedTuple):
    """What the graph says of N scans: their points and, where the graph has that output, their
    out-of-distribution scores (`clare_dist.ood`; None for a bundle exported before it)."""

    coords: np.ndarray  # N×2 float32
    ood_scores: np.ndarray | None  # N float32


def has_ood_score(session: ort.InferenceSession) -> bool:
    """Whether the graph has the out-of-distribution score as its second output."""
    return OOD_OUTPUT in [output.name for output in session.get_outputs()]


def run_regressor(session: ort.InferenceSession, scans: np.ndarray, batch_size: int = 32) -> Regression:
    """Coordinates (N×2 float32) and OOD scores (N float32, or None) for N×H×W uint8 scans, in
    batches of `batch_size`."""
    if scans.ndim != 3 or scans.dtype != np.uint8:
        raise ValueError(f"run_regressor takes N×H×W uint8 scans; got {scans.dtype} {scans.shape}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    expected = session.get_inputs()[0].shape[2:]
    if list(scans.shape[1:]) != expected:
        raise ValueError(f"the model takes {expected[0]}×{expected[1]} scans; got {scans.shape[1]}×{scans.shape[2]}")
    with_ood = has_ood_score(session)
    if len(scans) == 0:
        return Regression(np.zeros((0, 2), np.float32), np.zeros(0, np.float32) if with_ood else None)
    names = [OUTPUT_NAME, OOD_OUTPUT] if with_ood else [OUTPUT_NAME]
    batches = [np.ascontiguousarray(scans[i : i + batch_size, None]) for i in range(0, len(scans), batch_size)]
    outputs = [session.run(names, {INPUT_NAME: b}) for b in batches]
    return Regression(np.concatenate([o[0] for o in outputs]),
                      np.concatenate([o[1] for o in outputs]) if with_ood else None)
