"""An int8 regressor: ONNX Runtime's static QDQ quantisation, accepted only if it keeps the decisions.

On CPU an int8 ResNet runs ~3× faster than fp32 (VNNI/AVX2 integer kernels), which is what a
CPU-only site's throughput is. Static quantisation needs the range of every activation, so it is
calibrated on scans of the run's training folds (what the model was fitted to, never the scans
it is judged on); the result is then run beside the fp32 graph on the exported fold's test
scans, and refused when its R4 decisions agree with fp32's on fewer than `MIN_R4_AGREEMENT` of
them. Weights are int8 per output channel, activations uint8 per tensor (MinMax): the
configuration whose CPU kernels ONNX Runtime fuses (QLinearConv). The bundle's manifest records
what was done (`Quantization.manifest_entry`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from clare_dist.errors import ClareError
from clare_dist.rules import References, apply_rules
from clare_dist.runtime import INPUT_NAME, open_session, run_regressor

log = logging.getLogger(__name__)

MIN_R4_AGREEMENT = 0.99
CALIBRATION_BATCH = 8


class QuantizationError(ClareError, RuntimeError):
    """An int8 graph that would change too many decisions; the fp32 bundle stays as it was."""


@dataclass(frozen=True)
class Quantization:
    """What was quantised, on what, and how close it stayed to fp32."""

    calibration_scans: int
    checked_scans: int
    r4_agreement: float
    max_abs_coord_diff: float
    fp32_model_version: str
    seconds: float

    def manifest_entry(self) -> dict:
        return {
            "kind": "int8 static QDQ (ONNX Runtime): weights int8 per channel, activations uint8 (MinMax)",
            "onnxruntime": ort.__version__,
            "calibration_scans": self.calibration_scans,
            "checked_scans": self.checked_scans,
            "r4_agreement_with_fp32": self.r4_agreement,
            "min_r4_agreement": MIN_R4_AGREEMENT,
            "max_abs_coord_diff": self.max_abs_coord_diff,
            "fp32_model_version": self.fp32_model_version,
        }


class _Scans(CalibrationDataReader):
    def __init__(self, scans: np.ndarray) -> None:
        self._batches = iter([{INPUT_NAME: np.ascontiguousarray(scans[i : i + CALIBRATION_BATCH, None])}
                              for i in range(0, len(scans), CALIBRATION_BATCH)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def quantize_regressor(fp32: Path, out: Path, calibration: Sequence[np.ndarray], check: Sequence[np.ndarray],
                       references: References, fp32_model_version: str) -> Quantization:
    """Write the int8 graph of `fp32` to `out` if its R4 decisions on `check` agree with fp32's
    on at least MIN_R4_AGREEMENT of them; otherwise QuantizationError, and nothing is written."""
    if not len(calibration) or not len(check):
        raise ValueError("quantisation needs calibration scans (training folds) and check scans (held out)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), _Scans(np.stack(calibration)), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        scans = np.stack(check)
        expected = run_regressor(open_session(fp32, prefer_gpu=False), scans).coords
        got = run_regressor(open_session(quantized, prefer_gpu=False), scans).coords
        agreement = float(np.mean(apply_rules(got, references).r4 == apply_rules(expected, references).r4))
        report = Quantization(len(calibration), len(scans), agreement, float(np.abs(got - expected).max()),
                              fp32_model_version, time.perf_counter() - started)
        if not agreement >= MIN_R4_AGREEMENT:
            raise QuantizationError(
                f"the int8 regressor's R4 decisions agree with fp32's on {agreement:.1%} of {len(scans)} held-out "
                f"scans, under the {MIN_R4_AGREEMENT:.0%} required; it was discarded and the fp32 bundle kept. "
                "Calibrate on more training scans, or export without --int8"
            )
        quantized.replace(out)
    log.info("quantised %s to int8 in %.0f s: R4 agreement %.4f on %d held-out scans (max |Δcoord| %.3g)",
             fp32.name, report.seconds, agreement, len(scans), report.max_abs_coord_diff)
    return report
