"""The serving chain's stages, each a Ray Serve deployment that scales on its own.

Preprocessor (CPU: decode, validate, resize) → Regressor (ONNX Runtime with dynamic
batching; a GPU when the replica has one) → CaseLookup (R4 rules, the explanation and the
nearest known cases: microseconds of CPU, so one stage rather than two hops). Every stage
is a `clare_dist` call; each loads the same bundle and reports its model version, so the
ingress can tell when all of them serve the same model.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image
from ray import serve

from clare_dist.bundle import load_bundle
from clare_dist.result import INTENDED_USE, Screening
from clare_dist.runtime import open_session
from clare_dist.screening import (
    THUMBNAIL_SIZE,
    bundled_index,
    case_images,
    case_thumbnail,
    decode,
    regress,
    screen_points,
)
from clare_dist.scans import ScanConfig, ScanError
from serve.cpus import node_cpus

log = logging.getLogger("ray.serve")  # Serve adds the request id to this logger's records


@dataclass(frozen=True)
class DecodedScan:
    """A scan as the model's input (and a small picture of it when a figure is wanted), with
    the seconds each stage has spent on it so far."""

    scan: np.ndarray
    thumbnail: np.ndarray | None
    seconds: dict[str, float]


@dataclass(frozen=True)
class Regressed:
    """A scan's point in the reference space and its OOD score (None: the bundle has none), with
    the seconds each stage spent on it."""

    coords: np.ndarray
    ood_score: float | None
    seconds: dict[str, float]


@serve.deployment(name="Preprocessor", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=4)
class Preprocessor:
    """Decode, validate and resize one scan. A bad scan becomes a failed Screening that the next
    stages pass on untouched, so the ingress answers 422 with the reason from the chain's end."""

    def __init__(self, bundle: str, limits: ScanConfig = ScanConfig()) -> None:
        manifest = load_bundle(bundle)
        self.config = manifest.scan_config(limits)
        self.model_version = manifest.model_version

    def __call__(self, body: bytes, scan_id: str, thumbnail: bool = False) -> DecodedScan | Screening:
        start = time.perf_counter()
        try:
            scan = decode(body, self.config)
            small = decode(body, self.config.sized(THUMBNAIL_SIZE)) if thumbnail else None
        except ScanError as err:
            return Screening.failed(scan_id, err.kind, err.message, self.model_version)
        return DecodedScan(scan, small, {"decode": time.perf_counter() - start})

    def ready(self) -> str:
        return self.model_version


@dataclass(frozen=True)
class RegressorSettings:
    """How a regressor batches and runs ONNX Runtime: a Regressor deployment, or the ingress
    replicas' scan workers in topology 'single' (largest batch; threads and spinning of the session
    a lone scan runs on; they take what has queued, so no batch wait)."""

    max_batch_size: int = 16
    batch_wait_s: float = 0.0
    threads: int | None = None
    spinning: bool = False


@serve.deployment(name="Regressor", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Regressor:
    """The ONNX regressor. Requests arriving together run as one batch; the batch runs in a
    thread so the replica keeps accepting requests (which fill the next batch) meanwhile.
    Intra-op threads do not spin unless asked: spinning saves 1–3 ms a scan at batch 1, but the
    replica shares its cores with decoding, which spinning threads starve (measured: saturation
    13.5 → 11.9 req/s on 2 cores)."""

    def __init__(self, bundle: str, settings: RegressorSettings = RegressorSettings()) -> None:
        loaded = load_bundle(bundle)
        self.model_version = loaded.model_version
        # its node's cores unless told (serve/cpus.py: why not Ray's OMP_NUM_THREADS, nor os.cpu_count())
        self.session = open_session(loaded.onnx_path, threads=settings.threads or node_cpus(), spinning=settings.spinning)
        self.predict.set_max_batch_size(settings.max_batch_size)
        self.predict.set_batch_wait_timeout_s(settings.batch_wait_s)
        log.info("regressor %s on %s", self.model_version, self.session.get_providers()[0])

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def predict(self, scans: list[np.ndarray]) -> list[tuple[np.ndarray, float | None]]:
        regression = await asyncio.to_thread(regress, self.session, np.stack(scans), len(scans))
        scores = [None] * len(scans) if regression.ood_scores is None else [float(s) for s in regression.ood_scores]
        return list(zip(regression.coords, scores))

    async def __call__(self, decoded: DecodedScan | Screening) -> Regressed | Screening:
        if isinstance(decoded, Screening):
            return decoded
        start = time.perf_counter()
        coords, score = await self.predict(decoded.scan)
        return Regressed(coords, score, decoded.seconds | {"regress": time.perf_counter() - start})

    def ready(self) -> str:
        return self.model_version


@serve.deployment(name="CaseLookup", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class CaseLookup:
    """Rules, explanation and similar known cases for a point; figures and case thumbnails."""

    def __init__(self, bundle: str, images_root: str | None) -> None:
        loaded = load_bundle(bundle)
        self.references = loaded.references
        self.model_version = loaded.model_version
        self.index = bundled_index(loaded)
        self.images_root = images_root

    def screen(self, regressed: Regressed | Screening, scan_id: str, k: int) -> tuple[Screening, dict[str, float]]:
        """(the screening, seconds per stage) — a failed one as an earlier stage passed it on."""
        if isinstance(regressed, Screening):
            return regressed, {}
        start = time.perf_counter()
        screening = self._screening(regressed, scan_id, k)
        return screening, regressed.seconds | {"lookup": time.perf_counter() - start}

    def plot(self, regressed: Regressed, scan_id: str, k: int, thumbnail: np.ndarray) -> bytes:
        """The paper's Fig. 5 (reference space with the scan's point) beside Fig. 7 (similar cases)."""
        from clare_dist.plots import explanation_figure, figure_png

        screening = self._screening(regressed, scan_id, k)
        cases = case_images(self.index, screening, self.images_root)
        figure = explanation_figure(screening, self.references, cases, INTENDED_USE, scan_image=thumbnail)
        return figure_png(figure, dpi=100)

    def case_image(self, case_id: str) -> tuple[bytes | None, str]:
        """(PNG thumbnail, "") of an indexed case, or (None, why not) — unknown id or unreadable image."""
        from clare_dist.case_index import UnknownCaseError

        if self.index is None:
            return None, "this model bundle has no case index"
        try:
            image = case_thumbnail(self.index, case_id, self.images_root)
        except UnknownCaseError as err:
            return None, str(err)
        except ScanError as err:
            log.warning("case %s has no readable image (%s): %s", case_id, err.kind, err.message)
            return None, f"the image of case {case_id} cannot be read on this server ({err.kind})"
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue(), ""

    def ready(self) -> str:
        return self.model_version

    def _screening(self, regressed: Regressed, scan_id: str, k: int) -> Screening:
        scores = None if regressed.ood_score is None else np.array([regressed.ood_score], np.float32)
        return screen_points(regressed.coords, [scan_id], self.references, self.index, self.model_version, k, scores)[0]
