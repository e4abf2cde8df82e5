"""Screening one scan or many: decode → regress → classify → explain → similar known cases.

`clare-dist predict`, the batch job and the HTTP API all screen through these stage functions,
so a scan gets the same coordinates, decision, sentence and similar cases wherever it is
screened. Each stage is a small function, pure where it can be, so a distributed caller can
put each one on its own workers; `Screener` chains them for callers that hold the bundle in
one process.

Results carry a scan id (the file name or an id the caller gives), never patient data: DICOM
tags are not read into any result.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnxruntime as ort

from clare_dist.bundle import Bundle
from clare_dist.explanation import explanation
from clare_dist.labels import CLASSES
from clare_dist.ood import needs_review
from clare_dist.result import DEFAULT_K, INTENDED_USE, Screening, SimilarCase
from clare_dist.rules import References, RuleResult, apply_rules
from clare_dist.runtime import Regression, open_session, run_regressor
from clare_dist.scans import ScanConfig, ScanError, ScanSource, preprocess_scan

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from clare_dist.case_index import CaseIndex

log = logging.getLogger(__name__)

NO_INDEX_NOTE = "no case index in this bundle; build one with `clare-dist embed --labels ... --build-index`"
THUMBNAIL_SIZE = 160


@dataclass(frozen=True)
class SimilarResult:
    """Similar cases per scan (row-aligned with the input) and, per scan, a note or None."""

    cases: list[list[SimilarCase]]
    notes: list[str | None]


# --- the stages -------------------------------------------------------------------------------


def decode(source: ScanSource, config: ScanConfig) -> np.ndarray:
    """One scan as the model's uint8 input (config.size square, within config's limits); raises
    ScanError for a bad scan."""
    return preprocess_scan(source, config)


def regress(session: ort.InferenceSession, scans: np.ndarray, batch_size: int = 32) -> Regression:
    """N×2 coordinates and N OOD scores (None for a graph without them) of N×S×S uint8 scans,
    batched through ONNX Runtime."""
    return run_regressor(session, scans, batch_size=batch_size)


def classify(coords: np.ndarray, references: References) -> RuleResult:
    """Top 3 and R1–R4 for N points; the product's decision is `.decision` (R4)."""
    return apply_rules(coords, references)


def explain(rules: RuleResult) -> list[str]:
    """The paper's sentence for each of the N decisions."""
    return [explanation(list(top3), decision) for top3, decision in zip(rules.top3, rules.decision)]


def similar(index: CaseIndex | None, coords: np.ndarray, decisions: Sequence[str], k: int = DEFAULT_K) -> SimilarResult:
    """The paper's lookup: the k known cases of each decision's combination nearest to its point.

    The index groups the points by decision (`CaseIndex.nearest_per_combination`). Without an
    index every scan gets no cases and a note saying how to build one.
    """
    points = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if index is None:
        return SimilarResult([[] for _ in points], [NO_INDEX_NOTE] * len(points))
    found = index.nearest_per_combination(points, list(decisions), k)
    cases = [[SimilarCase(str(case_id), str(name), float(distance))
              for case_id, name, distance in zip(n.case_ids[0], n.combinations[0], n.distances[0])] for n in found]
    return SimilarResult(cases, [n.note for n in found])


def assemble(
    scan_ids: Sequence[str],
    coords: np.ndarray,
    rules: RuleResult,
    sentences: Sequence[str],
    similar_cases: SimilarResult,
    model_version: str,
    ood_scores: np.ndarray | None = None,
) -> list[Screening]:
    """Row-aligned stage outputs → one Screening per scan (`ood_scores` None: the graph has none)."""
    bits = rules.bits["r4"]
    scores = [None] * len(scan_ids) if ood_scores is None else [float(s) for s in np.asarray(ood_scores, np.float32)]
    flags = [None] * len(scan_ids) if ood_scores is None else [bool(f) for f in needs_review(scores)]
    return [
        Screening(
            scan_id=scan_id,
            x=float(coords[i, 0]),
            y=float(coords[i, 1]),
            top3=[str(name) for name in rules.top3[i]],
            top3_distances=[float(d) for d in rules.distances[i]],
            combination=str(rules.decision[i]),
            **{code: int(bits[i, j]) for j, code in enumerate(CLASSES)},
            explanation=sentences[i],
            similar_cases=similar_cases.cases[i],
            similar_note=similar_cases.notes[i],
            ood_score=scores[i],
            needs_review=flags[i],
            model_version=model_version,
        )
        for i, scan_id in enumerate(scan_ids)
    ]


def screen_points(coords: np.ndarray, scan_ids: Sequence[str], references: References, index: CaseIndex | None,
                  model_version: str, k: int = DEFAULT_K, ood_scores: np.ndarray | None = None) -> list[Screening]:
    """Everything after regression, for N points (and their OOD scores, where the graph gives
    them): rules, sentences, similar cases, the review flag, results.

    The stages that need no model: the serving chain runs them on CPU replicas apart from
    the regressor, `Screener` right after it.
    """
    if k <= 0:
        raise ValueError(f"k (the number of similar cases) must be positive; got {k}")
    coords = np.asarray(coords, dtype=np.float32).reshape(-1, 2)
    if ood_scores is not None and len(ood_scores) != len(coords):
        raise ValueError(f"got {len(ood_scores)} OOD scores for {len(coords)} points; give one per point or None")
    rules = classify(coords, references)
    found = similar(index, coords, list(rules.decision), k)
    return assemble(scan_ids, coords, rules, explain(rules), found, model_version, ood_scores)


def case_thumbnail(index: CaseIndex, case_id: str, images_root: str | os.PathLike | None = None,
                   size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """An indexed case's image as a size×size uint8 thumbnail.

    Only ids in the index have a path, so no caller can make this read any other file. A
    relative case path is resolved under `images_root` (default: the working directory).
    Raises UnknownCaseError for an id not in the index, ScanError when the image is unreadable.
    """
    path = Path(index.case(case_id)["path"])
    root = Path(images_root) if images_root is not None else Path.cwd()
    return decode(path if path.is_absolute() else root / path, ScanConfig(size=size))


def case_images(index: CaseIndex | None, screening: Screening, images_root: str | os.PathLike | None = None,
                size: int = THUMBNAIL_SIZE) -> list[tuple[str, str, float, np.ndarray | None]]:
    """(case id, combination, distance, thumbnail or None) of each similar case, for the figure.

    A case whose image cannot be read (moved, deleted) gets None, which the figure shows as
    a placeholder: a missing picture must not hide the rest of the explanation.
    """
    if index is None:
        return []
    thumbnails = []
    for case in screening.similar_cases:
        try:
            image = case_thumbnail(index, case.case_id, images_root, size)
        except ScanError as err:
            log.warning("no thumbnail for case %s (%s): %s", case.case_id, err.kind, err.message)
            image = None
        thumbnails.append((case.case_id, case.combination, case.distance, image))
    return thumbnails


# --- the whole chain --------------------------------------------------------------------------


class Screener:
    """A bundle opened once (ONNX session, references, case index) to screen scans with.

    The index is the bundle's own (`index/`) unless one is given; a bundle without one still
    screens, with no similar cases and a note saying how to add them. `limits` are the site's
    bounds on one scan (its size is the bundle's).
    """

    def __init__(
        self,
        bundle: Bundle,
        index: CaseIndex | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        spinning: bool = True,
        limits: ScanConfig = ScanConfig(),
    ) -> None:
        self.bundle = bundle
        self.scan_config = bundle.scan_config(limits)
        self.index = index if index is not None else bundled_index(bundle)
        self.session = open_session(bundle.onnx_path, threads=threads, spinning=spinning)
        self.batch_size = batch_size

    def screen(self, sources: Sequence[ScanSource], scan_ids: Sequence[str] | None = None,
               k: int = DEFAULT_K) -> list[Screening]:
        """Screen every scan in one ONNX batch; the first bad scan raises its ScanError."""
        ids = _scan_ids(sources, scan_ids)
        scans = [decode(source, self.scan_config) for source in sources]
        return self.screen_decoded(np.stack(scans) if scans else self._no_scans(), ids, k)

    def screen_many(self, sources: Sequence[ScanSource], scan_ids: Sequence[str] | None = None,
                    k: int = DEFAULT_K) -> list[Screening]:
        """Like `screen`, but a bad scan becomes a failed Screening in its place and the others go on."""
        ids = _scan_ids(sources, scan_ids)
        results: list[Screening | None] = [None] * len(ids)
        good: list[int] = []
        scans: list[np.ndarray] = []
        for i, (source, scan_id) in enumerate(zip(sources, ids)):
            try:
                scans.append(decode(source, self.scan_config))
                good.append(i)
            except ScanError as err:
                log.debug("scan %s not screened (%s): %s", scan_id, err.kind, err.message)  # the caller reports it
                results[i] = Screening.failed(scan_id, err.kind, err.message, self.bundle.model_version)
        decoded = np.stack(scans) if scans else self._no_scans()
        for i, screening in zip(good, self.screen_decoded(decoded, [ids[i] for i in good], k)):
            results[i] = screening
        return results  # type: ignore[return-value]  # every slot was filled above

    def screen_decoded(self, scans: np.ndarray, scan_ids: Sequence[str], k: int = DEFAULT_K) -> list[Screening]:
        """Screen scans already decoded to N×S×S uint8 (the batch job decodes in other tasks)."""
        regression = regress(self.session, scans, self.batch_size)
        return screen_points(regression.coords, scan_ids, self.bundle.references, self.index, self.bundle.model_version,
                             k, regression.ood_scores)

    def case_images(self, screening: Screening, images_root: str | os.PathLike | None = None,
                    size: int = THUMBNAIL_SIZE) -> list[tuple[str, str, float, np.ndarray | None]]:
        """(case id, combination, distance, thumbnail or None) of each similar case, for the figure."""
        return case_images(self.index, screening, images_root, size)

    def figure(self, screening: Screening, source: ScanSource,
               images_root: str | os.PathLike | None = None) -> Figure:
        """The explanation figure of a screened scan: the scan, its point, its similar cases."""
        return explanation_of(self.bundle, self.index, screening, source, images_root, self.scan_config)

    def _no_scans(self) -> np.ndarray:
        return np.zeros((0, self.bundle.image_size, self.bundle.image_size), np.uint8)


def explanation_of(bundle: Bundle, index: CaseIndex | None, screening: Screening, source: ScanSource,
                   images_root: str | os.PathLike | None = None, limits: ScanConfig = ScanConfig()) -> Figure:
    """The explanation figure (the paper's Fig. 5 and 7) of a screened scan, wherever it is drawn."""
    from clare_dist.plots import explanation_figure  # matplotlib loads only where figures are drawn

    return explanation_figure(screening, bundle.references, case_images(index, screening, images_root, THUMBNAIL_SIZE),
                              INTENDED_USE, scan_image=decode(source, limits.sized(THUMBNAIL_SIZE)))


def bundled_index(bundle: Bundle) -> CaseIndex | None:
    """The case index stored in the bundle, or None when the bundle has none yet."""
    if not bundle.has_index:
        log.info("the bundle at %s has no case index: no similar cases will be shown", bundle.path)
        return None
    from clare_dist.case_index import CaseIndex  # scipy's k-d tree loads only for bundles that have an index

    return CaseIndex.load(bundle.index_dir)


def figure_paths(out: str | os.PathLike, scan_ids: Sequence[str]) -> list[Path]:
    """Where each scan's figure goes: OUT for one scan, OUT-<scan name>.png for several.

    If two scans share a name (same file name in two folders), every name is prefixed with the
    scan's position, so no figure overwrites another.
    """
    out = Path(out)
    if len(scan_ids) == 1:
        return [out]
    stems = [Path(scan_id).stem for scan_id in scan_ids]
    if len(set(stems)) < len(stems):
        stems = [f"{i + 1}-{stem}" for i, stem in enumerate(stems)]
    return [out.with_name(f"{out.stem}-{stem}{out.suffix or '.png'}") for stem in stems]


def _scan_ids(sources: Sequence[ScanSource], scan_ids: Sequence[str] | None) -> list[str]:
    """The caller's ids, else each path's file name (bytes without an id are numbered)."""
    if scan_ids is not None:
        if len(scan_ids) != len(sources):
            raise ValueError(f"got {len(scan_ids)} scan ids for {len(sources)} scans; give one id per scan")
        return [str(scan_id) for scan_id in scan_ids]
    return [Path(s).name if isinstance(s, (str, os.PathLike)) else f"scan-{i}" for i, s in enumerate(sources)]
