"""bench_embed's tight loop: decode then ONNX Runtime in one process, batch after batch, for each
batch size, and the ceilings a decode -> ORT pipeline could reach from its stage times."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from common import ort_batched_throughput


def tight_loop(files: list[Path], onnx_path: Path, image_size: int, batch_sizes: list[int],
               threads: int | None) -> dict:
    """Sequential decode + ORT over the archive for each batch size; the best one, and the
    decode-only and ORT-only rates that bound what a pipeline can reach."""
    from clare_dist.runtime import open_session

    session = open_session(onnx_path, threads=threads)
    runs = []
    for batch_size in batch_sizes:
        _loop_pass(session, files[:batch_size], image_size, batch_size)  # warm-up, not timed
        runs.append(_loop_pass(session, files, image_size, batch_size))
        r = runs[-1]
        print(f"  batch {batch_size:3d}: {r['img_s']:6.2f} img/s   (decode {r['decode_ms']:5.1f} ms/img, "
              f"ORT {r['ort_ms']:5.1f} ms/img)")
    best = max(runs, key=lambda r: r["img_s"])
    ort_one = _ort_one_thread(onnx_path, files, image_size, best["batch_size"])
    return {"threads": threads, "runs": runs, "best": best, "ort_1thread": ort_one,
            "ceilings": _ceilings(best, ort_one, os.cpu_count() or 1)}


def _loop_pass(session, files: list[Path], image_size: int, batch_size: int) -> dict:
    """One timed pass over `files`: wall time, and the part spent decoding and in ORT."""
    from clare_dist.runtime import run_regressor
    from clare_dist.scans import ScanConfig
    from clare_dist.screening import decode

    t_decode = t_ort = 0.0
    start = time.perf_counter()
    for i in range(0, len(files), batch_size):
        t0 = time.perf_counter()
        batch = np.stack([decode(path, ScanConfig(size=image_size)) for path in files[i : i + batch_size]])
        t1 = time.perf_counter()
        run_regressor(session, batch, batch_size=batch_size)
        t2 = time.perf_counter()
        t_decode, t_ort = t_decode + t1 - t0, t_ort + t2 - t1
    wall = time.perf_counter() - start
    n = len(files)
    return {"batch_size": batch_size, "images": n, "seconds": wall, "img_s": n / wall,
            "decode_ms": t_decode / n * 1e3, "ort_ms": t_ort / n * 1e3,
            "decode_only_img_s": n / t_decode, "ort_only_img_s": n / t_ort}


def _ort_one_thread(onnx_path: Path, files: list[Path], image_size: int, batch_size: int) -> dict:
    """ORT with one intra-op thread at the best batch size: what one core does while the others
    decode (the split a pipeline on a few cores can use)."""
    from clare_dist.runtime import open_session
    from clare_dist.scans import ScanConfig
    from clare_dist.screening import decode

    count = max(batch_size, min(len(files), 2 * batch_size))
    scans = np.stack([decode(files[i % len(files)], ScanConfig(size=image_size)) for i in range(count)])
    return ort_batched_throughput(open_session(onnx_path, threads=1), scans, batch_size, repeats=1)


def _ceilings(best: dict, ort_one: dict, cpus: int) -> dict:
    """img/s a decode → ORT pipeline could reach, from the loop's own stage times."""
    t_dec, t_ort, t_ort1 = best["decode_ms"] / 1e3, best["ort_ms"] / 1e3, ort_one["ms_per_image"] / 1e3
    # d cores decoding, the other cpus − d running one single-threaded ORT each, all at full speed.
    split = max((min(d / t_dec, (cpus - d) / t_ort1), d) for d in range(1, cpus)) if cpus > 1 else (0.0, 0)
    return {
        "sequential_img_s": 1 / (t_dec + t_ort),
        "perfect_overlap_img_s": 1 / max(t_dec, t_ort),
        "split_cores_img_s": split[0],
        "split_cores_decode_cores": split[1],
        "cpus": cpus,
    }


def print_loop(loop: dict) -> None:
    best, ceilings, one = loop["best"], loop["ceilings"], loop["ort_1thread"]
    rate = best["img_s"]
    print(f"best: batch {best['batch_size']} at {rate:.2f} img/s; decode only {best['decode_only_img_s']:.1f} img/s, "
          f"ORT only {best['ort_only_img_s']:.1f} img/s ({loop['threads'] or 'default'} threads), "
          f"ORT 1 thread {one['img_s']:.1f} img/s")
    print(f"pipeline ceilings: sequential {ceilings['sequential_img_s']:.1f} img/s; perfect overlap "
          f"1/max(t_dec, t_ort) {ceilings['perfect_overlap_img_s']:.1f} ({ceilings['perfect_overlap_img_s'] / rate:.2f}x); "
          f"decoding on {ceilings['split_cores_decode_cores']} core(s), 1-thread ORT on each of the other "
          f"{ceilings['cpus'] - ceilings['split_cores_decode_cores']} {ceilings['split_cores_img_s']:.1f} "
          f"({ceilings['split_cores_img_s'] / rate:.2f}x)")
