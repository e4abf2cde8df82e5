"""The decoded-scan cache (issue 19, item 4): what a re-screen saves per scan.

For 1024² PNGs (the shared sample's, `common.full_size_pool`) and a 2048² 12-bit DX
(`bench_decode.dx_2048`, uncompressed and JPEG 2000 lossless): per scan, in one process, one
OpenCV thread, files from the page cache,
- `decode`: `preprocess_scan` (what every run without the cache pays),
- `cold`: the first run through the cache (read, hash, decode, write the entry),
- `warm`: a later run (read, hash, load the entry),
each the median over the files of the best of `--repeats`; and the entry's size on disk.

    python benchmarks/bench_scan_cache.py            # 32 PNGs, the DX in two syntaxes
    python benchmarks/bench_scan_cache.py --files 8 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
from bench_decode import dx_2048
from common import DEFAULT_WORK, full_size_pool, machine, write_json

from clare_dist.scan_cache import ScanCache, preprocess_cached
from clare_dist.scans import ScanConfig, preprocess_scan
from clare_dist.synth import encode_dx


def best_ms(work, repeats: int, setup=lambda: None) -> float:
    times = []
    for _ in range(repeats):
        setup()
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def measure(files: list[Path], config: ScanConfig, repeats: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="scan-cache-"))
    try:
        decode = [best_ms(lambda f=f: preprocess_scan(str(f), config), repeats) for f in files]
        cold = [best_ms(lambda f=f: preprocess_cached(str(f), config, ScanCache(folder))[1] and 1 / 0, repeats,
                        setup=lambda: shutil.rmtree(folder, ignore_errors=True)) for f in files]
        for f in files:
            preprocess_cached(str(f), config, ScanCache(folder))
        warm = [best_ms(lambda f=f: preprocess_cached(str(f), config, ScanCache(folder))[1] or 1 / 0, repeats)
                for f in files]
        entry_kb = statistics.median(p.stat().st_size for p in folder.rglob("*.npy")) / 1024
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"files": len(files), "decode_ms": statistics.median(decode), "cold_ms": statistics.median(cold),
            "warm_ms": statistics.median(warm), "entry_kb": entry_kb,
            "file_kb": statistics.median(f.stat().st_size for f in files) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=32, help="1024² PNGs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scan_cache.json"))
    args = parser.parse_args()
    cv2.setNumThreads(1)
    config = ScanConfig(size=args.size)
    cases = {"png_1024": full_size_pool(args.work / "pool-1024", args.files)}
    stored = dx_2048()
    for syntax in ("explicit", "jpeg2000"):
        path = args.work / f"dx-2048-{syntax}.dcm"
        if not path.is_file():
            path.write_bytes(encode_dx(stored, 12, transfer_syntax=syntax))
        cases[f"dx_2048_{syntax}"] = [path]
    rows = {name: measure(files, config, args.repeats) for name, files in cases.items()}
    print(f"{'scan':<22} {'files':>5} {'file KB':>8} {'decode ms':>10} {'cold ms':>8} {'warm ms':>8} {'saved':>6} {'entry KB':>9}")
    for name, row in rows.items():
        print(f"{name:<22} {row['files']:>5} {row['file_kb']:>8.0f} {row['decode_ms']:>10.2f} {row['cold_ms']:>8.2f} "
              f"{row['warm_ms']:>8.2f} {row['decode_ms'] / row['warm_ms']:>5.1f}x {row['entry_kb']:>9.1f}")
    print(f"wrote {write_json({'benchmark': 'scan_cache', 'size': args.size, 'machine': machine(), 'rows': rows}, args.out)}")


if __name__ == "__main__":
    main()
