"""What the GPU code paths see on this machine: which device each stage of clare-dist would use.

Training uses CUDA through torch when it is there; the ONNX regressor uses ONNX Runtime's CUDA
provider only with onnxruntime-gpu installed (the `gpu` extra); the case index runs on the CPU
(a k-d tree). Run it first on a GPU machine: a stage that falls back to the CPU says so here,
before any benchmark figure is read as a GPU figure.

    python benchmarks/gpu_probe.py [--out benchmarks/results/gpu_probe.json]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from common import machine, write_json


def probe() -> dict:
    import onnxruntime as ort
    import torch

    from clare_dist.runtime import onnx_providers
    from clare_dist.training import resolve_device

    smi = shutil.which("nvidia-smi")
    gpus = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip().splitlines() if smi else []
    return {
        "machine": machine(),
        "nvidia_smi": gpus,
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                  "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "onnxruntime": {"version": ort.__version__, "available_providers": ort.get_available_providers()},
        "clare_dist_uses": {
            "training": str(resolve_device("auto")),
            "regressor": onnx_providers()[0],
            "case_index": "CPU (k-d tree: a 2-D lookup gains nothing on a GPU)",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_probe.json"))
    args = parser.parse_args()
    found = probe()
    for stage, device in found["clare_dist_uses"].items():
        print(f"{stage:>10}: {device}")
    print(f"GPUs: {found['nvidia_smi'] or 'none seen by nvidia-smi'}; torch {found['torch']['version']} "
          f"(CUDA {found['torch']['cuda']}); onnxruntime {found['onnxruntime']['version']} "
          f"{found['onnxruntime']['available_providers']}")
    print(f"wrote {write_json(found, args.out)}")


if __name__ == "__main__":
    main()
