"""Whether a preprocessing keeps a trained model's decisions: R4 agreement against the one it was trained with.

On the real scans a bundle was not trained on (`agreement_bundle.py` keeps fold 0's validation
and test folds out), each in the forms a site sends: the sample's own 512² PNG, a 1024² PNG (the
512² scan enlarged with LANCZOS, as the benchmarks' pool is; the 1024² originals where the sample
kept one), that as a JPEG (quality 90), and a 2048² 12-bit DX DICOM. Each is decoded with the
bundle's preprocessing and with the candidate, regressed, and decided by R4; reported per form:
the share of equal decisions, how many distinct decisions there were (agreement among scans that
all get one answer would prove little), and how far the predicted points moved. Then, on the
1024² PNGs, the other resize filters the candidate was chosen among (applied to the same decoded
scan), and the model's own noise floor: the agreement of its decisions with themselves when each
input pixel moves by at most one gray level at random, and when the PNG is sent as a JPEG. A
model whose floor lies under the bar cannot certify any change of pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from common import SAMPLE_IMAGES, SAMPLE_ORIGINALS
from PIL import Image

from clare_dist.bundle import load_bundle
from clare_dist.cxr14 import fold_split
from clare_dist.scans import ScanConfig, preprocess_scan, read_scan
from clare_dist.screening import Screener
from clare_dist.synth import encode_dx

FORMS = ("png_512", "png_1024", "jpeg_1024", "dx_2048_12bit")
_L = Image.Resampling.LANCZOS
FILTERS = {  # on the decoded full-resolution scan, to the model's side
    "Pillow LANCZOS (lanczos/1)": lambda a, s: np.asarray(Image.fromarray(a).resize((s, s), _L)),
    "Pillow LANCZOS reducing_gap=2": lambda a, s: np.asarray(Image.fromarray(a).resize((s, s), _L, reducing_gap=2.0)),
    "Pillow BICUBIC": lambda a, s: np.asarray(Image.fromarray(a).resize((s, s), Image.Resampling.BICUBIC)),
    "Pillow BOX": lambda a, s: np.asarray(Image.fromarray(a).resize((s, s), Image.Resampling.BOX)),
    "OpenCV INTER_AREA (area/1)": lambda a, s: cv2.resize(a, (s, s), interpolation=cv2.INTER_AREA),
}


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


def agreement(bundle_dir: Path, names: list[str], candidate: str, baseline: str | None = None) -> dict:
    """Per form: R4 agreement of `candidate` with `baseline` (default: the bundle's preprocessing) over `names`."""
    bundle = load_bundle(bundle_dir)
    screener = Screener(bundle, threads=1)
    baseline = baseline or bundle.preprocessing
    decoded: dict[tuple[str, str], list[np.ndarray]] = {}
    for name in names:
        for form, data in forms(name).items():
            for preprocessing in (baseline, candidate):
                config = ScanConfig(size=bundle.image_size, preprocessing=preprocessing)
                decoded.setdefault((form, preprocessing), []).append(preprocess_scan(data, config))
    out: dict = {"bundle": str(bundle.path), "trained_with": bundle.preprocessing, "baseline": baseline,
                 "candidate": candidate, "scans": len(names)}
    for form in FORMS:
        before, after = (screener.screen_decoded(np.stack(decoded[form, p]), names) for p in (baseline, candidate))
        same = [a.combination == b.combination for a, b in zip(before, after)]
        moved = np.hypot([a.x - b.x for a, b in zip(before, after)], [a.y - b.y for a, b in zip(before, after)])
        pixels = np.abs(np.stack(decoded[form, baseline]).astype(int)
                        - np.stack(decoded[form, candidate]).astype(int))
        out[form] = {
            "r4_agreement": float(np.mean(same)), "disagreeing": int(len(same) - sum(same)),
            "distinct_decisions": len({b.combination for b in before}),
            "point_moved_median": float(np.median(moved)), "point_moved_max": float(moved.max()),
            "point_spread_median": float(np.median(np.hypot(*(np.array([[b.x, b.y] for b in before])
                                                               - np.median([[b.x, b.y] for b in before], axis=0)).T))),
            "pixel_mean_abs_diff": float(pixels.mean()), "pixel_max_abs_diff": int(pixels.max()),
        }
    out["filters_on_png_1024"] = _filters(screener, names, bundle.image_size)
    out["noise_floor"] = _noise_floor(screener, names, decoded, baseline)
    return out


def _decisions(screener: Screener, scans: np.ndarray, names: list[str]) -> list[str]:
    return [s.combination for s in screener.screen_decoded(scans, names)]


def _filters(screener: Screener, names: list[str], size: int) -> dict[str, dict]:
    full = [read_scan(forms(name)["png_1024"]) for name in names]
    made = {name: np.stack([resize(a, size) for a in full]) for name, resize in FILTERS.items()}
    base = next(iter(made))
    reference = _decisions(screener, made[base], names)
    return {name: {"r4_agreement": float(np.mean([a == b for a, b in zip(reference, _decisions(screener, scans, names))])),
                   "pixel_mean_abs_diff": float(np.abs(scans.astype(int) - made[base].astype(int)).mean())}
            for name, scans in made.items()}


def _noise_floor(screener: Screener, names: list[str], decoded: dict, preprocessing: str) -> dict[str, float]:
    png, jpeg = (np.stack(decoded[form, preprocessing]) for form in ("png_1024", "jpeg_1024"))
    jitter = np.random.default_rng(0).integers(-1, 2, png.shape)
    noisy = np.clip(png.astype(int) + jitter, 0, 255).astype(np.uint8)
    reference = _decisions(screener, png, names)
    return {name: float(np.mean([a == b for a, b in zip(reference, _decisions(screener, scans, names))]))
            for name, scans in (("plus_minus_one_gray_level", noisy), ("jpeg_q90_instead_of_png", jpeg))}
