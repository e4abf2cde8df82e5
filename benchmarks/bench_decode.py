"""Decoding cost per format and transfer syntax, the candidates, and the memory of the largest accepted scan.

A compressed backlog is decode-bound (DESIGN.md §3: a 2048² DX ≤ 25 ms uncompressed, a 1024²
PNG ≤ 6 ms). On one thread (OpenCV's too), this times:

- each candidate way to the model's 256² input (`decode_candidates.py`: the two preprocessings
  through `preprocess_scan`, and the bare library calls they were chosen among) on real 1024²
  NIH PNGs (8-bit gray and the RGBA quirk), one as a JPEG, and a 2048² 12-bit DX;
- `preprocess_scan` of that DX in every transfer syntax `clare-dist synth` writes, with both
  preprocessings;
- each in a fresh process, the peak resident memory of decoding the largest scan the default
  limits accept (7000², 49 M pixels) as a 16-bit DICOM, a 16-bit PNG and an 8-bit JPEG;
- with --agreement RUN (made by `agreement_bundle.py`), whether the new preprocessing keeps the
  trained model's R4 decisions on the scans it was not trained on (`decode_agreement.py`).

    python benchmarks/bench_decode.py                 # writes benchmarks/results/decode.json
    python benchmarks/bench_decode.py --repeats 5 --agreement /tmp/agreement
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
from common import RESULTS_DIR, cxr_pngs, full_size_originals, machine, resnet50_bundle, summary_ms, write_json
from decode_candidates import time_candidates
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


def time_decode(data: bytes, repeats: int, preprocessing: str) -> dict:
    config = ScanConfig(preprocessing=preprocessing)
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
    parser.add_argument("--agreement", type=Path, default=None, help="a run made by agreement_bundle.py")
    parser.add_argument("--agreement-scans", type=int, default=None, help="at most this many held-out scans")
    parser.add_argument("--agreement-untrained", action="store_true",
                        help="also on the benchmarks' untrained ResNet50 (head spread over the references), all sample scans")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the 7000² peak-memory probes")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)

    stored = dx_2048()
    originals = full_size_originals()
    gray = next(path for name, path in originals.items() if Image.open(path).mode == "L")
    rgba = next(path for name, path in originals.items() if Image.open(path).mode == "RGBA")
    jpeg = io.BytesIO()
    Image.open(gray).save(jpeg, format="JPEG", quality=90)
    inputs = {"png_1024_gray": (gray.read_bytes(), "png"), "png_1024_rgba": (rgba.read_bytes(), "png"),
              "jpeg_1024": (jpeg.getvalue(), "jpeg"), "dx_2048_12bit_explicit": (encode_dx(stored, 12), "dicom")}
    per_candidate = {}
    for name, (data, fmt) in inputs.items():
        per_candidate[name] = time_candidates(data, fmt, args.repeats)
        print(f"\n{name} ({len(data) / 2**20:.2f} MB) to 256², {args.repeats} runs, one thread: min / median ms")
        for candidate, figures in per_candidate[name].items():
            print(f"  {candidate:48s} {figures['min_ms']:7.2f} {figures['p50_ms']:7.2f}")

    per_syntax = {}
    print(f"\npreprocess_scan of a 2048² 12-bit DX, {args.repeats} runs, one thread: min / median ms")
    print(f"{'transfer syntax':18s} {'size MB':>8s} {'lanczos/1':>16s} {'area/1':>16s}")
    for syntax in TRANSFER_SYNTAXES:
        data = encode_dx(stored, 12, "MONOCHROME2", syntax)
        per_syntax[syntax] = {p: time_decode(data, args.repeats, p) for p in ("lanczos/1", "area/1")}
        row = "".join(f" {f['min_ms']:7.1f} {f['p50_ms']:8.1f}" for f in per_syntax[syntax].values())
        print(f"{syntax:18s} {len(data) / 2**20:8.2f}{row}")

    agreements = {}
    if args.agreement:
        from decode_agreement import held_out

        agreements["trained"] = (args.agreement / "bundle", held_out(args.agreement)[: args.agreement_scans], None)
    if args.agreement_untrained:
        agreements["untrained_resnet50"] = (resnet50_bundle(Path("/tmp/clare-bench"), 256),
                                            [p.name for p in cxr_pngs()][: args.agreement_scans], "lanczos/1")
    for kind, (bundle_dir, names, baseline) in agreements.items():
        from decode_agreement import FORMS
        from decode_agreement import agreement as measure

        agreement = agreements[kind] = measure(bundle_dir, names, "area/1", baseline)
        print(f"\nR4 agreement of area/1 with {agreement['baseline']} ({kind}: {agreement['bundle']}, trained with "
              f"{agreement['trained_with']}), {agreement['scans']} real scans it was not trained on:")
        for form in FORMS:
            figures = agreement[form]
            print(f"  {form:14s} {figures['r4_agreement']:.4f} ({figures['disagreeing']} differ; "
                  f"{figures['distinct_decisions']} distinct decisions; point moved median "
                  f"{figures['point_moved_median']:.4f}, max {figures['point_moved_max']:.4f}, against a spread of "
                  f"{figures['point_spread_median']:.4f}; pixels differ by {figures['pixel_mean_abs_diff']:.2f} "
                  f"on average)")
        for name, figures in agreement["filters_on_png_1024"].items():
            print(f"  1024² PNG, {name:32s} {figures['r4_agreement']:.4f} (pixels differ by "
                  f"{figures['pixel_mean_abs_diff']:.2f} on average)")
        print(f"  the model's own noise floor ({agreement['baseline']}): "
              + ", ".join(f"{k} {v:.4f}" for k, v in agreement["noise_floor"].items()))
    document = {"candidates": per_candidate, "dx_2048_12bit": per_syntax, "agreement": agreements,
                "repeats": args.repeats, "machine": machine()}
    if args.skip_memory:
        print(f"wrote {write_json(document, args.out)}")
        return

    with tempfile.TemporaryDirectory() as folder:
        memory = {kind: peak_memory(path) for kind, path in largest_accepted(Path(folder)).items()}
    print("largest accepted scan (7000², 49 M pixels): peak RSS of decoding it in a fresh process")
    for kind, figures in memory.items():
        print(f"  {kind:12s} file {figures['file_mb']:7.1f} MB  peak {figures['peak_rss_mb']:7.1f} MB "
              f"(+{figures['decoding_mb']:.1f} MB over the process before)")
    path = write_json(document | {"largest_accepted_7000": memory}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
