"""What the embedding and serving benchmarks share: the ResNet50 bundle, archives of full-size
scans, timing summaries, machine facts and the JSON writer.

The scripts import this as `common` (Python puts `benchmarks/` on the path when one of them is
run as `python benchmarks/bench_*.py`). Nothing here is shipped to Ray workers, so the workers
never need to import it.

Full-size scans: the shared CXR14 sample keeps its 501 scans at 512×512 (8-bit grayscale; see
its README), and only 10 of them as found at their original size (9 at 1024×1024, 6 of those
RGBA). A 1024×1024 archive is therefore made of the originals where the sample kept them (real
bytes, RGBA quirk included) and of the other scans upscaled with LANCZOS and written as 8-bit
grayscale PNGs. Those decode like the real 1024² grayscale files (about 22–27 ms against 21–25 ms
per scan here); the RGBA originals take about 36 ms and make up 6 of 501 files, about the rare
share CXR14 has.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks")

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr14-sample"
SAMPLE_IMAGES = SAMPLE / "images"
SAMPLE_ORIGINALS = SAMPLE / "images-original"
FULL_SIZE = 1024
DEFAULT_WORK = Path(tempfile.gettempdir()) / "clare-bench"
# The bundle manifest's "metrics" of the benchmark model; a bundle without it is rebuilt.
BENCHMARK_MODEL = {"benchmark_model": "untrained ResNet50 regressor, head rescaled to spread scans over [0, 1]^2"}


def benchmark_model(backbone: str) -> dict:
    """The manifest's mark of a benchmark bundle (ResNet50's as it always was, so built ones stay valid)."""
    if backbone == "resnet50":
        return BENCHMARK_MODEL
    return {"benchmark_model": f"untrained {backbone} regressor, head rescaled to spread scans over [0, 1]^2"}


# --- scans ------------------------------------------------------------------------------------


def cxr_pngs() -> list[Path]:
    """The 501 real NIH CXR14 scans of the shared sample (512×512 8-bit grayscale PNGs)."""
    files = sorted(SAMPLE_IMAGES.glob("*.png"))
    if not files:
        raise SystemExit(f"no scans in {SAMPLE_IMAGES}; the benchmarks need the shared CXR14 sample there")
    return files


def full_size_originals() -> dict[str, Path]:
    """File name → the sample's scans kept as found at 1024×1024 (real bytes; some RGBA)."""
    from PIL import Image

    found = {}
    for path in sorted(SAMPLE_ORIGINALS.glob("*.png")):
        with Image.open(path) as image:
            if image.size == (FULL_SIZE, FULL_SIZE):
                found[path.name] = path
    return found


def full_size_pool(pool_dir: Path, count: int) -> list[Path]:
    """`count` (≤ 501) distinct 1024×1024 PNGs: the original where the sample kept one, else the
    512² scan upscaled (LANCZOS, mode L). Each is made once and reused by later runs."""
    from PIL import Image

    sources = cxr_pngs()[:count]
    originals = full_size_originals()
    pool_dir.mkdir(parents=True, exist_ok=True)
    pool = []
    for source in sources:
        target = pool_dir / source.name
        if not target.is_file():
            tmp = pool_dir / f".{source.name}.{os.getpid()}.tmp"
            if source.name in originals:
                shutil.copyfile(originals[source.name], tmp)
            else:
                with Image.open(source) as image:
                    image.convert("L").resize((FULL_SIZE, FULL_SIZE), Image.Resampling.LANCZOS).save(tmp, format="PNG")
            os.replace(tmp, target)  # a killed run leaves no half-written scan in the pool
        pool.append(target)
    return pool


def archive_of(n: int, out_dir: Path, pool_dir: Path | None = None) -> Path:
    """A directory of `n` 1024×1024 PNGs with unique names, cycling through the pool (so archives
    bigger than the sample's 501 scans are possible). Reused when it already holds exactly them."""
    if n <= 0:
        raise ValueError(f"an archive needs at least one scan; got {n}")
    out_dir = Path(out_dir)
    pool = full_size_pool(pool_dir or out_dir.parent / "pool-1024", min(n, len(cxr_pngs())))
    files = {f"{i:06d}_{source.name}": source for i, source in zip(range(n), itertools.cycle(pool))}
    if out_dir.is_dir() and sorted(p.name for p in out_dir.iterdir()) == sorted(files):
        return out_dir
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    for name, source in files.items():
        _link_or_copy(source, tmp / name)  # same bytes, no copy; page-cache behaviour as with copies
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def _link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def scan_files(archive: Path) -> list[Path]:
    """The archive's scans in name order (what a tight loop walks through)."""
    return sorted(p for p in Path(archive).iterdir() if p.suffix == ".png")


def warm_page_cache(files: Sequence[Path]) -> int:
    """Read every file once, so no measurement includes a cold disk; returns the bytes read."""
    return sum(len(Path(f).read_bytes()) for f in files)


# --- the model bundle -------------------------------------------------------------------------


def start_work(workdir: Path, image_size: int, index_cases: int, backbone: str = "resnet50") -> Path:
    """How a benchmark starts: the library's logs quieted to warnings (the figures are the output),
    the work folder made, and the bundle it measures (built once, then reused): ResNet50 by
    default; the demo's ResNet18 at 48 px is the cheap model, where the pipeline's own cost shows."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("clare_dist", "jobs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    workdir.mkdir(parents=True, exist_ok=True)
    return resnet50_bundle(workdir, image_size, index_cases, backbone)


def resnet50_bundle(workdir: Path, image_size: int = 256, index_cases: int = 0, backbone: str = "resnet50") -> Path:
    """A bundle with an untrained ResNet50 (or `backbone`) regressor (throughput does not depend on the weights),
    exported and bundled exactly as a training run does; with `index_cases` > 0, a copy of it with
    a case index of that many cases drawn like real predictions. Built once, reused while loadable.
    """
    from clare_dist.bundle import BundleError, load_bundle

    root = Path(workdir) / f"{backbone}-{image_size}"
    base = root / "bundle"
    try:
        loaded = load_bundle(base)
        if loaded.manifest.get("metrics") != benchmark_model(backbone):
            raise BundleError(base, ["made by an older version of this script"])
        base_version = loaded.model_version
    except BundleError:
        base_version = _build_base_bundle(root, base, image_size, backbone)
    if index_cases <= 0:
        return base
    indexed = root / f"bundle-index-{index_cases}"
    try:
        bundle = load_bundle(indexed)
        if bundle.model_version == base_version and bundle.manifest.get("index", {}).get("cases") == index_cases:
            return indexed
    except BundleError:
        pass
    _build_indexed_copy(base, indexed, index_cases)
    return indexed


def _build_base_bundle(root: Path, out: Path, image_size: int, backbone: str) -> str:
    """Export the regressor (checked against torch on real scans) and write the bundle; the
    references come from the real label autoencoder (`clare-dist references`, ~15 s)."""
    import torch

    from clare_dist.bundle import write_bundle
    from clare_dist.steps.make_references import make_references
    from clare_dist.export import export_regressor
    from clare_dist.models import ModelConfig, build_model
    from clare_dist.reference_file import REFERENCES_FILE
    from clare_dist.scans import ScanConfig, preprocess_scan

    started = time.perf_counter()
    references = root / "references"
    if not (references / REFERENCES_FILE).is_file():
        log.info("training the label autoencoder for the references (about 15 s)")
        make_references(references)
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, head="regression")).eval()
    scans = [preprocess_scan(path, ScanConfig(size=image_size)) for path in cxr_pngs()[:16]]
    _spread_outputs(model, np.stack(scans))
    export_regressor([model], root / "regressor.onnx", image_size, scans[:4])
    bundle = write_bundle(out, root / "regressor.onnx", references / REFERENCES_FILE, backbone=backbone,
                          image_size=image_size, folds=[0], ensemble=False, metrics=benchmark_model(backbone))
    (root / "regressor.onnx").unlink()  # the bundle has its copy
    log.info("built the %s bundle %s in %.0f s", backbone, out, time.perf_counter() - started)
    return bundle.model_version


def _spread_outputs(model, scans: np.ndarray) -> None:
    """Rescale the untrained head so real scans land spread over the reference space.

    An untrained ResNet50 puts every scan far outside [0, 1]² (around (25, 15) here), where one
    rare combination is always the decision and the lookup is not what it is for real scans. An
    affine change of the last linear layer (same graph, same cost) maps these scans to mean 0.5,
    std 0.25 per coordinate, so decisions and lookups vary as with a trained model.
    """
    import torch

    with torch.inference_mode():
        out = model(torch.from_numpy(scans[:, None]))
        mean, std = out.mean(0), out.std(0).clamp_min(1e-6)
        fc = model.backbone.fc
        fc.weight.mul_((0.25 / std)[:, None])
        fc.bias.copy_((fc.bias - mean) * 0.25 / std + 0.5)


def _build_indexed_copy(base: Path, out: Path, n: int) -> None:
    """The base bundle plus a case index of `n` cases around its own references (drawn as
    bench_index draws them: Table 1 proportions, confusion, background)."""
    from bench_index import case_table

    from clare_dist.bundle import load_bundle
    from clare_dist.case_index import CaseIndex, write_index_into_bundle

    started = time.perf_counter()
    references = load_bundle(base).references.coords
    cases = case_table(n, references, np.random.default_rng(0))
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    shutil.copytree(base, tmp, copy_function=_link_or_copy)  # writing the index replaces files, never edits them
    try:
        write_index_into_bundle(tmp, CaseIndex.build(cases))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("indexed %d cases into %s in %.0f s", n, out, time.perf_counter() - started)


# --- measuring --------------------------------------------------------------------------------


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean/min/max of durations in seconds, as milliseconds."""
    if not len(seconds):
        return {"n": 0}
    ms = np.asarray(seconds, dtype=float) * 1e3
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def ort_batched_throughput(session, scans: np.ndarray, batch_size: int, repeats: int = 4) -> dict[str, float]:
    """ONNX Runtime alone on decoded scans in batches of `batch_size`: img/s after one warm-up
    batch. Also the process CPU per image, which shows how many cores ORT keeps busy."""
    from clare_dist.runtime import run_regressor

    run_regressor(session, scans[:batch_size], batch_size=batch_size)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        run_regressor(session, scans, batch_size=batch_size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = repeats * len(scans)
    return {"batch_size": batch_size, "images": n, "img_s": n / wall, "ms_per_image": wall / n * 1e3,
            "cpu_ms_per_image": cpu / n * 1e3, "cores_busy": cpu / wall}


def ort_per_core_throughput(onnx_path: str | os.PathLike, scans: np.ndarray, batch_size: int, repeats: int = 4) -> dict[str, float]:
    """ONNX Runtime on every core at once as one single-thread session per core, each running
    batches of `batch_size` in its own thread (ORT frees the GIL): img/s. The other way to fill
    the machine, which on a few cores can beat one session's intra-op threads."""
    from clare_dist.runtime import open_session, run_regressor

    cores = os.cpu_count() or 1
    sessions = [open_session(onnx_path, threads=1) for _ in range(cores)]
    for session in sessions:
        run_regressor(session, scans[:batch_size], batch_size=batch_size)
    threads = [threading.Thread(target=lambda s=s: [run_regressor(s, scans, batch_size=batch_size) for _ in range(repeats)])
               for s in sessions]
    wall, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = cores * repeats * len(scans)
    return {"sessions": cores, "batch_size": batch_size, "images": n, "img_s": n / wall, "ms_per_image": wall / n * 1e3,
            "cpu_ms_per_image": cpu / n * 1e3, "cores_busy": cpu / wall}


# --- reporting --------------------------------------------------------------------------------


def machine() -> dict:
    """The facts a reader needs to compare runs: cores, load, accelerators, versions."""
    import onnxruntime as ort

    versions = {}
    for name in ("ray", "onnxruntime", "onnxruntime-gpu", "numpy", "pillow", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    providers = ort.get_available_providers()
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime_providers": providers,
        "gpu": "CUDAExecutionProvider" in providers or shutil.which("nvidia-smi") is not None,
        "versions": versions,
    }


def write_json(document: dict, out: str | os.PathLike) -> Path:
    """Write the document (figures, settings, machine) as indented JSON; returns the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=_plain) + "\n")
    return path


def _plain(value):
    """numpy scalars and paths, which json cannot write as they are."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
