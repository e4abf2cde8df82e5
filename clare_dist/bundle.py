"""The model bundle: the one contract between training, batch jobs and serving.

A bundle is a directory holding the ONNX regressor, the references it regresses into, and a
manifest that says what the graph expects and where it came from:

    manifest.json     format version, model version, input/output, folds, metrics, versions, ood
    regressor.onnx    N×1×S×S uint8 "scan" → N×2 float32 "coords" (and N float32 "ood_score")
    references.json   the 26 reference coordinates
    index/            the case index of known cases (`clare_dist.case_index`), once built

The graph's second output, the out-of-distribution score (`clare_dist.ood`), and the manifest's
`ood` entry that describes it (how its threshold was fitted) came later: a bundle without them
still loads and screens, its results saying the scans were not checked (`needs_review` None).

The model version is a hash of the regressor and the references, so every result can name
exactly the model that produced it, and a bundle whose files were changed after bundling is
refused. This module is the only writer of manifest.json: the case index code hands its files
and its summary to `install_index`. Loading a bundle needs neither torch nor the case index's
libraries, so every process that screens can load one. The manifest names the scan preprocessing
the model was trained with (`input.preprocessing`, `clare_dist.scans.preprocessing`); every
consumer decodes with it (`Bundle.scan_config`), and a bundle that names none is from before it
was recorded: the legacy "lanczos/1".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import onnx

from clare_dist import __version__
from clare_dist.atomic import atomic_path, write_json_atomic
from clare_dist.errors import ClareError
from clare_dist.ood import OOD_OUTPUT
from clare_dist.reference_file import REFERENCES_FILE, load_references
from clare_dist.result import INTENDED_USE
from clare_dist.rules import References
from clare_dist.runtime import INPUT_NAME, OUTPUT_NAME
from clare_dist.scans.errors import ScanConfig
from clare_dist.scans.preprocessing import (
    DEFAULT_PREPROCESSING,
    LEGACY_PREPROCESSING,
    PreprocessingMismatchError,
    UnknownPreprocessingError,
    preprocessing,
)

log = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
REGRESSOR_FILE = "regressor.onnx"
INDEX_DIR = "index"  # the case index of known cases (clare_dist.case_index), when built
MODEL_VERSION_PREFIX = "m-"
REQUIRED_KEYS: tuple[str, ...] = (
    "bundle_format_version",
    "model_version",
    "created_at",
    "backbone",
    "input",
    "output",
    "folds",
    "ensemble",
    "metrics",
    "data_hash",
    "versions",
    "intended_use",
)
_PACKAGES = ("clare-dist", "torch", "torchvision", "onnx", "onnxruntime", "numpy")


class BundleError(ClareError, ValueError):
    """A bundle that cannot be used; `problems` lists every reason found."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"the model bundle at {path} is not usable ({len(problems)} problem(s)):\n{lines}\n"
            "Fix the files named, or export the trained run again to re-create the bundle."
        )


@dataclass(frozen=True)
class Bundle:
    """A validated bundle; `model_version` goes into every result made with it."""

    path: Path
    manifest: dict[str, Any]
    references: References
    onnx_path: Path
    model_version: str
    image_size: int
    preprocessing: str  # the id of the scans' preprocessing the model was trained with (scans.preprocessing)

    def scan_config(self, limits: ScanConfig = ScanConfig()) -> ScanConfig:
        """The site's `limits` for this model's input: its size and its preprocessing. Limits that
        name another preprocessing are refused: the model never saw scans made that way."""
        if limits.preprocessing not in (None, self.preprocessing):
            raise PreprocessingMismatchError(
                f"the model bundle at {self.path} was trained on scans preprocessed with {self.preprocessing!r}, "
                f"but this run is set to preprocess them with {limits.preprocessing!r}; drop that setting (the "
                "bundle's is used), or export a bundle from a run trained with it"
            )
        return replace(limits, size=self.image_size, preprocessing=self.preprocessing)

    @property
    def index_dir(self) -> Path:
        """Where the case index lives (`clare_dist.case_index.CaseIndex.load` reads it)."""
        return self.path / INDEX_DIR

    @property
    def has_ood_score(self) -> bool:
        """Whether the graph scores each scan's distance from the training archive (`clare_dist.ood`)."""
        return "ood" in self.manifest

    @property
    def has_index(self) -> bool:
        """Whether a case index was written into this bundle (manifest entry and directory)."""
        return "index" in self.manifest and self.index_dir.is_dir()


def model_version(onnx_path: str | os.PathLike, references_path: str | os.PathLike) -> str:
    """Content hash of the regressor then the references: the same files give the same version."""
    digest = hashlib.sha256()
    for file in (onnx_path, references_path):
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return MODEL_VERSION_PREFIX + digest.hexdigest()[:16]


def write_bundle(
    out_dir: str | os.PathLike,
    onnx_path: str | os.PathLike,
    references_path: str | os.PathLike,
    *,
    backbone: str,
    image_size: int,
    folds: list[int],
    ensemble: bool,
    metrics: dict,
    data_hash: str | None = None,
    preprocessing_id: str = DEFAULT_PREPROCESSING,
    quantization: dict | None = None,
    ood: dict[str, Any] | None = None,
) -> Bundle:
    """Assemble and validate a bundle in a temporary directory, then move it to `out_dir`.

    `preprocessing_id` is how the model's training scans were made (`scans.preprocessing`);
    `quantization`, for an int8 regressor, what `clare_dist.quantize` did and measured;
    `ood` describes the graph's OOD score output (name, shape, dtype, how its threshold was fitted),
    None for a graph without it.

    A bundle already at `out_dir` is replaced as a whole (its case index belongs to the old
    model's coordinates). At no moment does `out_dir` hold a half-written bundle.
    """
    # The normalisation the graph has inside: torch loads here, where a trained model is bundled,
    # and never where a bundle is only loaded.
    from clare_dist.models import BACKBONES, IMAGENET_MEAN, IMAGENET_STD

    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}; got {backbone!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive integer; got {image_size!r}")
    chosen = preprocessing(preprocessing_id)
    out = Path(out_dir)
    replacing = out.exists()
    with atomic_path(out) as tmp:
        tmp.mkdir()
        shutil.copyfile(onnx_path, tmp / REGRESSOR_FILE)
        shutil.copyfile(references_path, tmp / REFERENCES_FILE)
        manifest = {
            "bundle_format_version": BUNDLE_FORMAT_VERSION,
            "model_version": model_version(tmp / REGRESSOR_FILE, tmp / REFERENCES_FILE),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "backbone": backbone,
            "input": {
                "name": INPUT_NAME,
                "shape": [None, 1, image_size, image_size],
                "dtype": "uint8",
                "layout": "N1HW",
                "preprocessing": {"name": chosen.name, "version": chosen.version, "description": chosen.description},
                "in_graph": "scaling to [0, 1] and ImageNet normalisation",
                "normalisation": {"scale": "1/255", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            },
            "output": {"name": OUTPUT_NAME, "shape": [None, 2], "dtype": "float32"},
            "folds": [int(fold) for fold in folds],
            "ensemble": bool(ensemble),
            "metrics": metrics,
            "data_hash": data_hash,
            "versions": package_versions(),
            "intended_use": INTENDED_USE,
        }
        if quantization is not None:
            manifest["quantization"] = quantization
        if ood is not None:
            manifest["ood"] = ood
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            checked = load_bundle(tmp)  # refuse to publish what no consumer could load
        except BundleError as err:
            raise BundleError(out, err.problems) from None
    log.info("%s model bundle %s at %s", "replaced the" if replacing else "wrote", checked.model_version, out)
    return replace(checked, path=out, onnx_path=out / REGRESSOR_FILE)


def install_index(bundle_path: str | os.PathLike, save: Callable[[Path], Any], record: dict[str, Any]) -> Path:
    """Put a case index into a valid bundle and record it in the manifest; model_version is untouched.

    `save(directory)` writes the index's files; `record` (cases, combinations, ...) becomes the
    manifest's `index` entry. The files are written beside the bundle's and renamed into place, so
    readers see the old index or the new one, never half of one; the manifest is replaced
    atomically after that.
    """
    bundle = load_bundle(bundle_path)  # only a valid bundle gets an index
    target = bundle.index_dir
    with atomic_path(target) as tmp:
        save(tmp)
    write_json_atomic(bundle.path / MANIFEST_FILE, {**bundle.manifest, "index": {"directory": INDEX_DIR, **record}})
    if load_bundle(bundle.path).model_version != bundle.model_version:  # guards the contract, cheaply
        raise RuntimeError("writing the case index changed the bundle's model_version; this is a bug")
    return target


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide what the bundle computes."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        candidates = (name, f"{name}-gpu") if name == "onnxruntime" else (name,)
        versions[name] = next((v for v in map(_installed_version, candidates) if v), None)
    versions["clare-dist"] = versions["clare-dist"] or __version__
    return versions


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and validate a bundle; BundleError lists every problem found, not just the first."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(root, ["the directory does not exist; check the path, or create the bundle with training"])
    problems: list[str] = []
    manifest = _read_manifest(root / MANIFEST_FILE, problems)
    onnx_file, references_file = root / REGRESSOR_FILE, root / REFERENCES_FILE
    for file in (onnx_file, references_file):
        if not file.is_file():
            problems.append(f"{file.name} is missing")

    if onnx_file.is_file() and references_file.is_file() and isinstance(manifest.get("model_version"), str):
        actual = model_version(onnx_file, references_file)
        if actual != manifest["model_version"]:
            problems.append(
                f"{REGRESSOR_FILE} and {REFERENCES_FILE} hash to {actual} but the manifest says "
                f"model_version {manifest['model_version']}: the files were changed after bundling"
            )
    if onnx_file.is_file():
        _check_graph(onnx_file, manifest, problems)
    references = None
    if references_file.is_file():
        try:
            references = load_references(references_file)
        except (ValueError, OSError) as err:  # LabelError is a ValueError
            problems.append(f"{REFERENCES_FILE} is invalid: {err}")
    image_size = _image_size(manifest, problems)
    scans_made_by = _preprocessing(manifest, problems)

    if problems:
        raise BundleError(root, problems)
    return Bundle(root, manifest, references, onnx_file, manifest["model_version"], image_size, scans_made_by)


def _preprocessing(manifest: dict[str, Any], problems: list[str]) -> str:
    """The preprocessing id of `input.preprocessing` ({name, version}); bundles from before it was
    recorded (a sentence there) were all trained with the legacy one, which stays available."""
    entry = manifest.get("input", {}).get("preprocessing") if isinstance(manifest.get("input"), dict) else None
    if not isinstance(entry, dict):
        return LEGACY_PREPROCESSING
    identifier = f"{entry.get('name')}/{entry.get('version')}"
    try:
        return preprocessing(identifier).id
    except UnknownPreprocessingError as err:
        problems.append(f"{MANIFEST_FILE} input.preprocessing: {err}")
        return identifier


def _read_manifest(file: Path, problems: list[str]) -> dict[str, Any]:
    """The manifest as a dict ({} when unusable), with its problems appended."""
    if not file.is_file():
        problems.append(f"{MANIFEST_FILE} is missing")
        return {}
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problems.append(f"{MANIFEST_FILE} is not valid JSON ({err})")
        return {}
    if not isinstance(manifest, dict):
        problems.append(f"{MANIFEST_FILE} is not a JSON object")
        return {}
    version = manifest.get("bundle_format_version")
    if "bundle_format_version" in manifest and version != BUNDLE_FORMAT_VERSION:
        problems.append(
            f"{MANIFEST_FILE} has bundle_format_version {version!r}; this clare-dist {__version__} reads "
            f"version {BUNDLE_FORMAT_VERSION} (use the clare-dist version that wrote it, or re-export)"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        problems.append(f"{MANIFEST_FILE} lacks the keys {missing}")
    return manifest


def _image_size(manifest: dict[str, Any], problems: list[str]) -> int:
    """S from the manifest's input shape [null, 1, S, S] (0 when unusable, with a problem noted)."""
    section = manifest.get("input")
    if not isinstance(section, dict):
        if "input" in manifest:
            problems.append(f"{MANIFEST_FILE} input must be an object; got {section!r}")
        return 0
    shape = section.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3] > 0):
        problems.append(f"{MANIFEST_FILE} input.shape must be [null, 1, S, S] with S > 0; got {shape!r}")
        return 0
    return shape[2]


def _check_graph(file: Path, manifest: dict[str, Any], problems: list[str]) -> None:
    """The graph's input and output names, dtypes and shapes against the manifest's."""
    try:
        graph = onnx.load(str(file), load_external_data=False).graph
    except Exception as err:  # protobuf DecodeError and friends
        problems.append(f"{REGRESSOR_FILE} is not a readable ONNX model ({type(err).__name__})")
        return
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    outputs = list(graph.output)
    scores = [value for value in outputs if value.name == OOD_OUTPUT]
    if "ood" in manifest and not scores:
        problems.append(f"the manifest describes an OOD score but {REGRESSOR_FILE} has no output {OOD_OUTPUT!r}")
    if scores and "ood" not in manifest:
        problems.append(f"{REGRESSOR_FILE} has an output {OOD_OUTPUT!r} that the manifest does not describe (its 'ood' entry)")
    sections = (("input", inputs), ("output", [v for v in outputs if v.name != OOD_OUTPUT]), ("ood", scores))
    for role, values in sections:
        declared = manifest.get(role)
        if not isinstance(declared, dict):
            continue  # a missing section is reported with the manifest; no "ood": a bundle from before it
        if len(values) != 1:
            problems.append(f"{REGRESSOR_FILE} has {len(values)} graph {role}s; a regressor has exactly one")
            continue
        actual = _describe_value(values[0])
        for key in ("name", "dtype", "shape"):
            if key in declared and declared[key] != actual[key]:
                problems.append(
                    f"the manifest's {role} {key} is {declared[key]!r} but {REGRESSOR_FILE}'s {role} "
                    f"{key} is {actual[key]!r}"
                )


def _describe_value(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    return {
        "name": value.name,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
        "shape": [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim],
    }
