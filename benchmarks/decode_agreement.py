"""Whether a preprocessing keeps a trained model's decisions: R4 agreement against the one it was trained with.

On the real scans a bundle was not trained on (`agreement_bundle.py` keeps fold 0's validation
and test folds out), each in the forms a site sends: the sample's own 512² PNG, a 1024² PNG (the
512² scan enlarged with LANCZOS, as the benchmarks' pool is; the 1024² originals where the sample
kept one), that as a JPEG (quality 90), and a 2048² 12-bit DX DICOM. Each is decoded with the
bundle's preprocessing and with the candidate, regressed, and decided by R4; reported per form:
the share of equal decisions, how many distinct decisions there were (agreement among scans that
all get one answer would prove little), and how far the predicted points moved.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from common import SAMPLE_IMAGES, SAMPLE_ORIGINALS
from PIL import Image

from clare_dist.bundle import load_bundle
from clare_dist.cxr14 import fold_split
from clare_dist.scans import ScanConfig, preprocess_scan
from clare_dist.screening import Screener
from clare_dist.synth import encode_dx

FORMS = ("png_512", "png_1024", "jpeg_1024", "dx_2048_12bit")


def forms(name: str) -> dict[str, bytes]:
    """One scan's bytes in each form of FORMS."""
    small = SAMPLE_IMAGES / name
    original = SAMPLE_ORIGINALS / name
    with Image.open(small) as image:
        pixels = np.asarray(image.convert("L"))
    if original.is_file() and Image.open(original).size == (1024, 1024):
        big = np.asarray(Image.open(original).convert("L"))
    else:
        big = np.asarray(Image.fromarray(pixels).resize((1024, 1024), Image.Resampling.LANCZOS))
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(big).save(png, format="PNG")
    Image.fromarray(big).save(jpeg, format="JPEG", quality=90)
    dx = np.asarray(Image.fromarray(big).resize((2048, 2048), Image.Resampling.BICUBIC)).astype(np.uint16) * 16
    return {"png_512": small.read_bytes(), "png_1024": png.getvalue(), "jpeg_1024": jpeg.getvalue(),
            "dx_2048_12bit": encode_dx(dx, 12)}


def held_out(run_dir: Path, fold: int = 0) -> list[str]:
    table = pd.read_parquet(run_dir / "prepared" / "labels.parquet")
    split = fold_split(fold)
    return sorted(table[table["fold"].isin([split.test, split.validation])]["image_index"])


def agreement(run_dir: Path, candidate: str, limit: int | None = None) -> dict:
    """Per form: R4 agreement of `candidate` with the bundle's preprocessing, over the held-out scans."""
    bundle = load_bundle(run_dir / "bundle")
    screener = Screener(bundle, threads=1)
    names = held_out(run_dir)[:limit]
    decoded: dict[tuple[str, str], list[np.ndarray]] = {}
    for name in names:
        for form, data in forms(name).items():
            for preprocessing in (bundle.preprocessing, candidate):
                config = ScanConfig(size=bundle.image_size, preprocessing=preprocessing)
                decoded.setdefault((form, preprocessing), []).append(preprocess_scan(data, config))
    out: dict = {"bundle": str(bundle.path), "trained_with": bundle.preprocessing, "candidate": candidate,
                 "scans": len(names)}
    for form in FORMS:
        before, after = (screener.screen_decoded(np.stack(decoded[form, p]), names)
                         for p in (bundle.preprocessing, candidate))
        same = [a.combination == b.combination for a, b in zip(before, after)]
        moved = np.hypot([a.x - b.x for a, b in zip(before, after)], [a.y - b.y for a, b in zip(before, after)])
        pixels = np.abs(np.stack(decoded[form, bundle.preprocessing]).astype(int)
                        - np.stack(decoded[form, candidate]).astype(int))
        out[form] = {
            "r4_agreement": float(np.mean(same)), "disagreeing": int(len(same) - sum(same)),
            "distinct_decisions": len({b.combination for b in before}),
            "point_moved_median": float(np.median(moved)), "point_moved_max": float(moved.max()),
            "point_spread_median": float(np.median(np.hypot(*(np.array([[b.x, b.y] for b in before])
                                                               - np.median([[b.x, b.y] for b in before], axis=0)).T))),
            "pixel_mean_abs_diff": float(pixels.mean()), "pixel_max_abs_diff": int(pixels.max()),
        }
    return out
