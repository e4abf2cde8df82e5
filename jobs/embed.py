"""Archive embedding on Ray Data: every scan of a backlog classified, explained and linked to cases.

On a GPU cluster the pipeline is staged: decode (CPU tasks) → ONNX Runtime regression (an actor
pool holding the GPUs) → rules, explanation and similar cases (CPU tasks) → Parquet. Without a
GPU the three stages run fused in one task per batch (`screen_batch`), one per CPU, each with a
single-threaded ONNX Runtime session cached in its worker process: staged, every batch crossed
the object store twice and waited behind an actor that shared the cores with the decoders, and
with a cheap model the job ran at 0.18x a plain loop; fused, nothing moves between stages and
the job scales with the CPUs it is given. The stages are `clare_dist.batch` functions either way. The archive is a folder (or a manifest), or a PACS
(`PacsSource`): then the query's instance list is saved first, the decode stage retrieves
(`clare_dist.pacs.stages`, at most `concurrency` tasks talking to the PACS at once), and with
`store_results` the finish stage stores each SR and Secondary Capture back and confirms it (a rerun
delivers again what an earlier run could not: `clare_dist.pacs.redelivery`). Resumption is the output's own: scans already in complete part
files are not listed again, so a rerun after a kill screens only what is missing and never
writes a row twice. Making a labelled archive's results the bundle's case index needs no Ray:
`clare_dist.case_index.build_case_index`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from clare_dist.batch import (
    RESULTS_DIR,
    completed_scan_ids,
    decode_batch,
    finish_screenings,
    inputs_table,
    list_archive,
    read_results,
)
from clare_dist.bundle import load_bundle
from clare_dist.encode.parquet_row import to_table
from clare_dist.ood import OOD_OUTPUT
from clare_dist.result import DEFAULT_K
from clare_dist.runtime import open_session, run_regressor
from clare_dist.report import write_report
from clare_dist.scan_cache import ScanCache
from clare_dist.scans import ScanConfig
from clare_dist.screening import bundled_index
from clare_dist.triage import write_worklist

if TYPE_CHECKING:
    from clare_dist.pacs.selection import Selection
    from clare_dist.pacs.stages import Pacs
    from clare_dist.result_files import ResultFolders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedSettings:
    """Resources of the pipeline. On a small machine keep actors + decode tasks below the CPUs
    (a pool holding every CPU starves the read and write tasks: ray#44687)."""

    batch_size: int = 32
    workers: int = 1
    actor_cpus: float = 1.0
    task_cpus: float = 0.5
    ort_threads: int | None = None
    k: int = DEFAULT_K
    pipeline: str = "auto"  # "fused" (one task per batch), "staged" (the actor pool), "auto": staged only with a GPU
    screen_cpus: float = 1.0  # CPUs of one fused task, whose ONNX Runtime uses as many threads
    # Attempts after a task's worker or node is lost, and restarts of a lost regressor actor. Ray
    # Data's default is without end: a batch whose worker dies every time (a codec crashing the
    # process) would hold the job forever; bounded, the job fails with the reason and a rerun
    # resumes it after the rows written.
    task_retries: int = 3
    actor_restarts: int = 3
    limits: ScanConfig = ScanConfig()  # the site's bounds on one scan; its size is the bundle's
    results: ResultFolders | None = None  # where the SR, Secondary Capture and FHIR files go (embed --dicom-out/--fhir-out)
    scan_cache: Path | None = None  # decoded scans kept for a later run with the same preprocessing (embed --scan-cache)


@dataclass(frozen=True)
class PacsSource:
    """A PACS as the archive: which instances (`selection`), how many retrieval tasks at once, and
    whether the results go back into it."""

    pacs: Pacs
    selection: Selection
    store_results: bool = False
    concurrency: int = 2


class RegressBatch:
    """The Ray Data stage that regresses a batch of decoded scans: an ONNX Runtime session, loaded once per actor
    (serve.stages.Regressor is its counterpart in Serve)."""

    def __init__(self, onnx_path: str, threads: int | None):
        self.session = open_session(onnx_path, threads=threads, spinning=False)  # decode tasks share the cores

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return regress_decoded(self.session, batch)


def regress_decoded(session, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A decoded batch with its scans replaced by their points (and OOD scores)."""
    regression = run_regressor(session, batch["scan"], batch_size=len(batch["scan"]))
    scores = {} if regression.ood_scores is None else {OOD_OUTPUT: regression.ood_scores}
    return ({key: value for key, value in batch.items() if key != "scan"}
            | {"x": regression.coords[:, 0], "y": regression.coords[:, 1]} | scores)


@lru_cache(maxsize=2)
def _session_for_task(onnx_path: str, manifest_stamp: str, threads: int):
    """One ONNX Runtime session per worker process and bundle, as `_bundle_for_task` keeps the bundle."""
    return open_session(onnx_path, threads=threads, prefer_gpu=False, spinning=False)


def screen_batch(batch: dict[str, np.ndarray], bundle_path: str, onnx_path: str, manifest_stamp: str, k: int,
                 folders: ResultFolders | None, limits: ScanConfig, threads: int, cache: ScanCache | None = None) -> pa.Table:
    """The fused pipeline's one stage: decode, regress and finish a batch in the task that read it."""
    regressed = regress_decoded(_session_for_task(onnx_path, manifest_stamp, threads), decode_batch(batch, limits, cache))
    return _finish(pd.DataFrame(regressed), bundle_path, manifest_stamp, k, folders, limits)


@lru_cache(maxsize=2)
def _bundle_for_task(bundle_path: str, manifest_stamp: str):
    """Bundle and case index, loaded once per worker process rather than shipped with each task.

    Worker processes outlive a job; the manifest's stamp in the key makes a rebuilt index or a
    replaced bundle load afresh.
    """
    bundle = load_bundle(bundle_path)
    return bundle, bundled_index(bundle)


def _finish(batch: pd.DataFrame, bundle_path: str, manifest_stamp: str, k: int, folders: ResultFolders | None,
            limits: ScanConfig, store_to: Pacs | None = None) -> pa.Table:
    bundle, index = _bundle_for_task(bundle_path, manifest_stamp)
    screenings = finish_screenings(batch, bundle.references, bundle.model_version, index=index, k=k)
    paths = batch["path"].astype(str).tolist()
    sources = batch["source"].tolist() if "source" in batch else paths  # a PACS's objects, or the files
    pictures = None
    if folders is not None:  # the results for hospital systems, before the rows that say they exist
        from clare_dist.result_files import batch_pictures, write_batch_results

        pictures = batch_pictures(bundle, index, screenings, sources, limits)  # shared with the store below
        write_batch_results(screenings, sources, bundle, index, folders, limits, pictures)
    stored = None
    if store_to is not None:
        from clare_dist.pacs.stages import store_results

        stored = store_results(screenings, sources, bundle, index, store_to, limits, pictures)
    return to_table(screenings, paths, stored)


def _stamp(bundle) -> str:
    return f"{bundle.model_version}/{bundle.manifest.get('index', {}).get('built_at')}"


def fitting_actor_cpus(settings: EmbedSettings, cluster_cpus: float) -> float:
    """CPUs per regressor actor such that the actors leave room for one decode and one finish task.

    Actors holding every CPU starve the other stages and the job hangs without an error
    (ray#44687), so on a cluster too small for the requested actors each actor gets a smaller
    share. A cluster with no CPUs yet (autoscaling from zero) is left to the autoscaler.
    """
    reserved = 2 * settings.task_cpus
    if cluster_cpus <= 0 or settings.workers * settings.actor_cpus + reserved <= cluster_cpus:
        return settings.actor_cpus
    share = (cluster_cpus - reserved) / settings.workers
    if share < 0.1:
        raise ValueError(f"{settings.workers} regressor workers do not fit in this cluster's {cluster_cpus:g} CPUs "
                         f"next to the decoding tasks; use fewer --workers")
    log.warning("%d regressor actors x %.2f CPU do not fit in %g CPUs with the decoding tasks: %.2f CPU each",
                settings.workers, settings.actor_cpus, cluster_cpus, share)
    return share


def run_embed(bundle_path: Path, source: Path | PacsSource, out_dir: Path, settings: EmbedSettings = EmbedSettings()) -> pd.DataFrame:
    """Screen every scan of `source` (a folder, a manifest or a PACS) not yet in `out_dir`; return all result rows.

    Ends by (re)writing `out_dir/report.html` over all the rows, so a resumed run's report
    covers the whole archive."""
    bundle = load_bundle(bundle_path)
    limits = bundle.scan_config(settings.limits)  # the model's size and preprocessing
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = _pacs_inputs(source, out_dir) if isinstance(source, PacsSource) else inputs_table(list_archive(source))
    done = completed_scan_ids(out_dir)
    todo = inputs[~inputs["scan_id"].isin(done)]
    log.info("%d scans in %s: %d already screened, %d to do", len(inputs), _named(source), len(inputs) - len(todo), len(todo))
    undelivered = _undelivered(inputs, out_dir) if isinstance(source, PacsSource) and source.store_results else None
    if len(todo):
        start = time.perf_counter()
        resources = ray.cluster_resources()
        use_gpu = resources.get("GPU", 0) >= 1
        cache = None if settings.scan_cache is None else ScanCache(Path(settings.scan_cache))
        if cache is not None:
            log.info("scan cache %s: %d decoded scans for %s at %d px", cache.root, cache.entries(limits),
                     limits.preprocessing, limits.size)
        blocks = max(1, -(-len(todo) // settings.batch_size))
        dataset = ray.data.from_pandas(todo.reset_index(drop=True)).repartition(blocks)
        if pipeline_for(settings, source, use_gpu) == "fused":
            log.info("pipeline: fused (decode, regression and finish in one task per batch, %g CPU each)", settings.screen_cpus)
            dataset = dataset.map_batches(
                screen_batch, fn_kwargs={"bundle_path": str(bundle.path), "onnx_path": str(bundle.onnx_path),
                                         "manifest_stamp": _stamp(bundle), "k": settings.k, "folders": settings.results,
                                         "limits": limits, "threads": max(1, int(settings.screen_cpus)), "cache": cache},
                batch_size=settings.batch_size, batch_format="numpy", num_cpus=settings.screen_cpus,
                max_retries=settings.task_retries,
            )
        else:
            log.info("pipeline: staged (decode tasks, %d regressor actor(s)%s, finish tasks)", settings.workers,
                     " on GPUs" if use_gpu else "")
            dataset = _staged(dataset, bundle, source, settings, limits, fitting_actor_cpus(settings, resources.get("CPU", 0)),
                              use_gpu, cache)
        dataset.write_parquet(str(out_dir / RESULTS_DIR))
        log.info("screened %d scans in %.1f s", len(todo), time.perf_counter() - start)
    if undelivered is not None and len(undelivered):
        _redeliver(undelivered, bundle, source, settings, limits, out_dir)
    results = read_results(out_dir)
    counts = results["status"].value_counts().to_dict()
    log.info("%s: %d rows (%s)", out_dir, len(results), ", ".join(f"{k} {v}" for k, v in counts.items()))
    log.info("reading worklist: %s", write_worklist(out_dir, results, bundle.references))
    report = write_report(out_dir, results, bundle, bundled_index(bundle))
    log.info("report: %s", report)
    return results


def pipeline_for(settings: EmbedSettings, source: Path | PacsSource, use_gpu: bool) -> str:
    """The pipeline a job runs: the one asked for, else staged where an actor must hold a GPU or
    a PACS's retrieval needs its own concurrency limit, fused otherwise."""
    if settings.pipeline not in ("auto", "fused", "staged"):
        raise ValueError(f"the embed pipeline is auto, fused or staged; got {settings.pipeline!r}")
    if settings.pipeline != "auto":
        return settings.pipeline
    return "staged" if use_gpu or isinstance(source, PacsSource) else "fused"


def _staged(dataset: ray.data.Dataset, bundle, source: Path | PacsSource, settings: EmbedSettings, limits: ScanConfig,
            actor_cpus: float, use_gpu: bool, cache: ScanCache | None) -> ray.data.Dataset:
    """Decode (or retrieve) tasks → the regressor actor pool → finish tasks."""
    if isinstance(source, PacsSource):
        from clare_dist.pacs.stages import fetch_decode_batch

        keep = source.store_results or (settings.results is not None and settings.results.dicom is not None)
        dataset = dataset.map_batches(
            fetch_decode_batch, fn_kwargs={"pacs": source.pacs, "selection": source.selection, "config": limits,
                                           "keep_source": keep},
            batch_size=settings.batch_size, batch_format="numpy", num_cpus=settings.task_cpus,
            compute=ray.data.TaskPoolStrategy(size=source.concurrency), max_retries=settings.task_retries,
        )
    else:
        dataset = dataset.map_batches(
            decode_batch, fn_kwargs={"config": limits, "cache": cache}, batch_size=settings.batch_size,
            batch_format="numpy", num_cpus=settings.task_cpus, max_retries=settings.task_retries,
        )
    dataset = dataset.map_batches(
        RegressBatch, fn_constructor_kwargs={"onnx_path": str(bundle.onnx_path), "threads": settings.ort_threads},
        compute=ray.data.ActorPoolStrategy(size=settings.workers), batch_size=settings.batch_size,
        batch_format="numpy", num_cpus=actor_cpus, num_gpus=1 if use_gpu else 0,
        max_restarts=settings.actor_restarts, max_task_retries=settings.task_retries,
    )
    store_to = source.pacs if isinstance(source, PacsSource) and source.store_results else None
    dataset = dataset.map_batches(
        _finish, fn_kwargs={"bundle_path": str(bundle.path), "manifest_stamp": _stamp(bundle), "k": settings.k,
                            "folders": settings.results, "limits": limits, "store_to": store_to},
        batch_size=settings.batch_size,
        batch_format="pandas", num_cpus=settings.task_cpus, max_retries=settings.task_retries,
    )
    return dataset


def _undelivered(inputs: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """An earlier run's screened instances whose results the PACS does not hold, with each row's
    screening (pickled, to travel to the tasks unchanged)."""
    import pickle

    from clare_dist.pacs.redelivery import screenings_of, undelivered
    from clare_dist.pacs.stages import INSTANCE_COLUMNS

    rows = undelivered(read_results(out_dir))
    if not len(rows):
        return rows
    log.info("%d screened scans whose results the PACS does not hold: delivering them again", len(rows))
    pickled = pd.DataFrame({"scan_id": rows["scan_id"].to_numpy(),
                            "screening": [pickle.dumps(s) for s in screenings_of(rows)]})
    return inputs[["scan_id", *INSTANCE_COLUMNS]].merge(pickled, on="scan_id")


def redeliver_batch(batch: pd.DataFrame, pacs: Pacs, bundle_path: str, manifest_stamp: str, limits: ScanConfig) -> pd.DataFrame:
    """The redelivery stage (pacs.redelivery): retrieve, remake, store and confirm a batch's results."""
    import pickle

    from clare_dist.pacs.redelivery import redeliver
    from clare_dist.pacs.stages import instances_of

    bundle, index = _bundle_for_task(bundle_path, manifest_stamp)
    screenings = [pickle.loads(data) for data in batch["screening"]]
    outcomes = redeliver(screenings, instances_of(batch), pacs, bundle, index, limits)
    return pd.DataFrame({"scan_id": batch["scan_id"].to_numpy(), "results_stored": outcomes})


def _redeliver(undelivered: pd.DataFrame, bundle, source: PacsSource, settings: EmbedSettings, limits: ScanConfig,
               out_dir: Path) -> None:
    from clare_dist.pacs.redelivery import write_deliveries

    blocks = max(1, -(-len(undelivered) // settings.batch_size))
    outcomes = ray.data.from_pandas(undelivered.reset_index(drop=True)).repartition(blocks).map_batches(
        redeliver_batch, fn_kwargs={"pacs": source.pacs, "bundle_path": str(bundle.path), "manifest_stamp": _stamp(bundle),
                                    "limits": limits},
        batch_size=settings.batch_size, batch_format="pandas", num_cpus=settings.task_cpus,
        compute=ray.data.TaskPoolStrategy(size=source.concurrency), max_retries=settings.task_retries,
    ).to_pandas()
    write_deliveries(out_dir, outcomes["scan_id"].astype(str).tolist(), outcomes["results_stored"].astype(str).tolist())


def _pacs_inputs(source: PacsSource, out_dir: Path) -> pd.DataFrame:
    """The run's instance list: the one saved in `out_dir` by an earlier run, else the PACS's answer, saved first."""
    from clare_dist.pacs.instances import save_instances, saved_instances
    from clare_dist.pacs.stages import instances_table

    described = source.pacs.described
    instances = saved_instances(out_dir, described, source.selection)
    if instances is None:
        source.pacs.check()  # unreachable, or the wrong credentials: one clear error before any task starts
        instances = save_instances(out_dir, described, source.selection, source.pacs.query(source.selection))
    elif source.store_results:
        source.pacs.check()
    return instances_table(instances)


def _named(source: Path | PacsSource) -> str:
    return source.pacs.public_url if isinstance(source, PacsSource) else str(source)
