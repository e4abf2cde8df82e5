"""Archive embedding on Ray Data: every scan of a backlog classified, explained and linked to cases.

The pipeline is decode (CPU tasks) → ONNX Runtime regression (an actor pool; CUDA with a GPU)
→ rules, explanation and similar cases (CPU tasks) → Parquet. The stages are
`clare_dist.batch` functions. The archive is a folder (or a manifest), or a PACS
(`PacsSource`): then the query's instance list is saved first, the decode stage retrieves
(`clare_dist.pacs.stages`, at most `concurrency` tasks talking to the PACS at once), and with
`store_results` the finish stage stores each SR and Secondary Capture back and confirms it. Resumption is the output's own: scans already in complete part
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
    limits: ScanConfig = ScanConfig()  # the site's bounds on one scan; its size is the bundle's
    results: ResultFolders | None = None  # where the SR, Secondary Capture and FHIR files go (embed --dicom-out/--fhir-out)


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
        regression = run_regressor(self.session, batch["scan"], batch_size=len(batch["scan"]))
        scores = {} if regression.ood_scores is None else {OOD_OUTPUT: regression.ood_scores}
        return ({key: value for key, value in batch.items() if key != "scan"}
                | {"x": regression.coords[:, 0], "y": regression.coords[:, 1]} | scores)


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
    if folders is not None:  # the results for hospital systems, before the rows that say they exist
        from clare_dist.result_files import write_batch_results

        write_batch_results(screenings, sources, bundle, index, folders, limits)
    stored = None
    if store_to is not None:
        from clare_dist.pacs.stages import store_results

        stored = store_results(screenings, sources, bundle, index, store_to, limits)
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
    if len(todo):
        start = time.perf_counter()
        resources = ray.cluster_resources()
        use_gpu = resources.get("GPU", 0) >= 1
        actor_cpus = fitting_actor_cpus(settings, resources.get("CPU", 0))
        blocks = max(1, -(-len(todo) // settings.batch_size))
        dataset = ray.data.from_pandas(todo.reset_index(drop=True)).repartition(blocks)
        if isinstance(source, PacsSource):
            from clare_dist.pacs.stages import fetch_decode_batch

            keep = source.store_results or (settings.results is not None and settings.results.dicom is not None)
            dataset = dataset.map_batches(
                fetch_decode_batch, fn_kwargs={"pacs": source.pacs, "selection": source.selection, "config": limits,
                                               "keep_source": keep},
                batch_size=settings.batch_size, batch_format="numpy", num_cpus=settings.task_cpus,
                compute=ray.data.TaskPoolStrategy(size=source.concurrency),
            )
        else:
            dataset = dataset.map_batches(
                decode_batch, fn_kwargs={"config": limits}, batch_size=settings.batch_size,
                batch_format="numpy", num_cpus=settings.task_cpus,
            )
        dataset = dataset.map_batches(
            RegressBatch, fn_constructor_kwargs={"onnx_path": str(bundle.onnx_path), "threads": settings.ort_threads},
            compute=ray.data.ActorPoolStrategy(size=settings.workers), batch_size=settings.batch_size,
            batch_format="numpy", num_cpus=actor_cpus, num_gpus=1 if use_gpu else 0,
        )
        store_to = source.pacs if isinstance(source, PacsSource) and source.store_results else None
        dataset = dataset.map_batches(
            _finish, fn_kwargs={"bundle_path": str(bundle.path), "manifest_stamp": _stamp(bundle), "k": settings.k,
                                "folders": settings.results, "limits": limits, "store_to": store_to},
            batch_size=settings.batch_size,
            batch_format="pandas", num_cpus=settings.task_cpus,
        )
        dataset.write_parquet(str(out_dir / RESULTS_DIR))
        log.info("screened %d scans in %.1f s", len(todo), time.perf_counter() - start)
    results = read_results(out_dir)
    counts = results["status"].value_counts().to_dict()
    log.info("%s: %d rows (%s)", out_dir, len(results), ", ".join(f"{k} {v}" for k, v in counts.items()))
    log.info("reading worklist: %s", write_worklist(out_dir, results, bundle.references))
    report = write_report(out_dir, results, bundle, bundled_index(bundle))
    log.info("report: %s", report)
    return results


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
