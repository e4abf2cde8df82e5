"""The calls a screening process makes, as one function: run where torch is loaded and where it cannot be.

`tests/test_torch_free.py` runs `answers` in its own process (torch loaded by the fixtures) and in
a subprocess that cannot import torch, torchvision or matplotlib, and compares the two. Only the
inference path is imported here, so this module itself must load in both.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

K = 5


def answers(bundle_path: Path, scans: list[Path], images_root: Path) -> dict[str, Any]:
    """What `clare-dist predict --json`, the batch job's stages, the scan workers and the serving
    stages answer for `scans`, as JSON-ready values (timings left out)."""
    return {"predict": _predict(bundle_path, scans), "embed": _embed(bundle_path, scans),
            "scan_workers": _scan_workers(bundle_path, scans), "serve": _serve(bundle_path, scans, images_root)}


def _predict(bundle_path: Path, scans: list[Path]) -> dict[str, Any]:
    from clare_dist.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["predict", *map(str, scans), "--bundle", str(bundle_path), "--json", "--k", str(K)])
    return {"exit": code, "lines": [json.loads(line) for line in out.getvalue().splitlines()]}


def _embed(bundle_path: Path, scans: list[Path]) -> dict[str, Any]:
    from clare_dist.batch import decode_batch, finish_batch
    from clare_dist.bundle import load_bundle
    from clare_dist.report import row_screening
    from clare_dist.result import STATUS_OK
    from clare_dist.scans import ScanConfig
    from clare_dist.screening import bundled_index
    from jobs.embed import RegressBatch

    bundle = load_bundle(bundle_path)
    batch = {"scan_id": np.array([s.name for s in scans], dtype=object), "path": np.array(list(map(str, scans)), dtype=object)}
    decoded = decode_batch(batch, ScanConfig().sized(bundle.image_size))
    regressed = RegressBatch(str(bundle.onnx_path), threads=1)(decoded)
    rows = finish_batch(pd.DataFrame(regressed), bundle.references, bundle.model_version, bundled_index(bundle), k=K).to_pandas()
    return {"rows": json.loads(rows.to_json(orient="records")),
            "screenings": [row_screening(row).to_dict() for _, row in rows[rows["status"] == STATUS_OK].iterrows()]}


def _scan_workers(bundle_path: Path, scans: list[Path]) -> list[Any]:
    from clare_dist.bundle import load_bundle
    from clare_dist.scan_workers import ScanWorkers
    from clare_dist.scans import ScanConfig, ScanError

    bundle = load_bundle(bundle_path)
    workers = ScanWorkers(bundle.onnx_path, ScanConfig().sized(bundle.image_size), workers=1, wide_threads=1)
    try:
        futures = [workers.submit(scan) for scan in scans]
        found: list[Any] = []
        for future in futures:
            try:
                found.append(future.result(timeout=120).coords.tolist())
            except ScanError as err:
                found.append(err.kind)
        return found
    finally:
        workers.close()


def _serve(bundle_path: Path, scans: list[Path], images_root: Path) -> list[Any]:
    from clare_dist.runtime import open_session
    from clare_dist.result import Screening
    from clare_dist.screening import regress
    from serve.stages import CaseLookup, Preprocessor, Regressed

    decoder = Preprocessor.func_or_class(str(bundle_path))  # as the ingress holds them (serve/api.py)
    lookup = CaseLookup.func_or_class(str(bundle_path), str(images_root))
    session = open_session(Path(bundle_path) / "regressor.onnx", threads=1)
    found: list[Any] = []
    for scan in scans:
        decoded = decoder(scan.read_bytes(), scan.name)
        if isinstance(decoded, Screening):  # a scan that could not be screened
            found.append(decoded.to_dict())
            continue
        regression = regress(session, decoded.scan[None], 1)
        score = None if regression.ood_scores is None else float(regression.ood_scores[0])
        screening, _ = lookup.screen(Regressed(regression.coords[0], score, decoded.seconds), scan.name, K)
        png, why = lookup.case_image(screening.similar_cases[0].case_id)
        found.append({"screening": screening.to_dict(), "first_case_png": hashlib.sha256(png or b"").hexdigest(), "why": why})
    return found
