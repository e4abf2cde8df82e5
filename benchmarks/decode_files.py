"""Preprocess the same scans many times in one process: a whole-process figure of one preprocessing.

For an outside timer (`/usr/bin/time -v`, or any that runs two commands in turn): the process's
CPU time over `--rounds` × the files, less a run with `--rounds 0` (imports, reading the files),
is the preprocessing's cost. OpenCV is held to one thread, as in `bench_decode.py`.

    taskset -c 0 python benchmarks/decode_files.py --preprocessing area/1 --rounds 20 \\
        ../shared/data/cxr14-sample/images-original/*.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from clare_dist.scans import ScanConfig, preprocess_scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--preprocessing", default="area/1")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    config = ScanConfig(size=args.size, preprocessing=args.preprocessing)
    scans = [path.read_bytes() for path in args.files]
    for _ in range(args.rounds):
        for data in scans:
            preprocess_scan(data, config)


if __name__ == "__main__":
    main()
