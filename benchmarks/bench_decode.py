"""Decoding cost per transfer syntax, and the memory of the largest accepted scan.

A compressed backlog is decode-bound (DESIGN.md §3: a 2048² DX ≤ 25 ms uncompressed, a 1024²
PNG ≤ 6 ms). This times `preprocess_scan` (decode, 8-bit mapping, resize to 256) of one 2048²
12-bit DX — a real NIH scan upscaled, so the codecs see real texture — in every transfer syntax
`clare-dist synth` writes, on one thread, and of a real 1024² PNG; then, each in a fresh process,
the peak resident memory of decoding the largest scan the default limits accept (7000², 49 M
pixels) as a 16-bit DICOM, a 16-bit PNG and an 8-bit JPEG.

    python benchmarks/bench_decode.py                 # writes benchmarks/results/decode.json
    python benchmarks/bench_decode.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from common import RESULTS_DIR, full_size_originals, machine, summary_ms, write_json
from PIL import Image

from clare_dist.scans import ScanConfig, preprocess_scan
from clare_dist.synth import TRANSFER_SYNTAXES, encode_dx

PEAK_PROBE = textwrap.dedent("""
    import re, sys
    from clare_dist.scans import preprocess_scan

    def high_water():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over exec)
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

    before = high_water()
    preprocess_scan(sys.argv[1])
    print(before, high_water())
""")


def dx_2048() -> np.ndarray:
    """A real 1024² NIH scan, upscaled to 2048² and spread over 12 bits."""
    name, path = sorted(full_size_originals().items())[0]
    with Image.open(path) as image:
        big = image.convert("L").resize((2048, 2048), Image.Resampling.BICUBIC)
    return (np.asarray(big).astype(np.uint16) * 16 + np.arange(2048, dtype=np.uint16)[None, :] % 16).astype(np.uint16)


def time_decode(data: bytes, repeats: int) -> dict:
    config = ScanConfig()
    preprocess_scan(data, config)  # warm-up: lazy imports, codec initialisation
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        preprocess_scan(data, config)
        seconds.append(time.perf_counter() - start)
    return summary_ms(seconds) | {"bytes": len(data)}


def peak_memory(path: Path) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(path)], capture_output=True, text=True, env=env,
                          check=True, timeout=600)
    before, after = map(int, done.stdout.split())
    return {"file_mb": path.stat().st_size / 2**20, "peak_rss_mb": after / 2**20, "rss_before_mb": before / 2**20,
            "decoding_mb": (after - before) / 2**20}


def largest_accepted(folder: Path) -> dict[str, Path]:
    side = 7000
    y, x = np.mgrid[0:side, 0:side]
    stored = ((x * 3 + y * 5) % 4096).astype(np.uint16)
    del x, y
    files = {"dicom_16bit": folder / "dx.dcm", "png_16bit": folder / "scan16.png", "jpeg_8bit": folder / "scan.jpg"}
    files["dicom_16bit"].write_bytes(encode_dx(stored, 12))
    Image.fromarray(stored).save(files["png_16bit"])
    Image.fromarray((stored >> 4).astype(np.uint8)).save(files["jpeg_8bit"], quality=90)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "decode.json")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    stored = dx_2048()
    per_syntax = {}
    print(f"preprocess_scan of a 2048² 12-bit DX, {args.repeats} runs, one thread")
    print(f"{'transfer syntax':18s} {'size MB':>8s} {'p50 ms':>8s} {'min ms':>8s}")
    for syntax in TRANSFER_SYNTAXES:
        figures = time_decode(encode_dx(stored, 12, "MONOCHROME2", syntax), args.repeats)
        per_syntax[syntax] = figures
        print(f"{syntax:18s} {figures['bytes'] / 2**20:8.2f} {figures['p50_ms']:8.1f} {figures['min_ms']:8.1f}")
    png = next(iter(full_size_originals().values())).read_bytes()
    png_figures = time_decode(png, args.repeats)
    print(f"{'1024² NIH PNG':18s} {len(png) / 2**20:8.2f} {png_figures['p50_ms']:8.1f} {png_figures['min_ms']:8.1f}")

    with tempfile.TemporaryDirectory() as folder:
        memory = {kind: peak_memory(path) for kind, path in largest_accepted(Path(folder)).items()}
    print("largest accepted scan (7000², 49 M pixels): peak RSS of decoding it in a fresh process")
    for kind, figures in memory.items():
        print(f"  {kind:12s} file {figures['file_mb']:7.1f} MB  peak {figures['peak_rss_mb']:7.1f} MB "
              f"(+{figures['decoding_mb']:.1f} MB over the process before)")
    path = write_json({"dx_2048_12bit": per_syntax, "png_1024": png_figures, "largest_accepted_7000": memory,
                       "repeats": args.repeats, "machine": machine()}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
