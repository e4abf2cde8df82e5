"""Benchmark of the PACS ways in and out: a real Orthanc on loopback, DICOMweb against DIMSE,
against `embed` over the same files on disk.

Issue 17 §5: instances per second pulled, screened and stored back through each protocol, the
per-instance latency of each, and where the time goes. Everything runs in a network namespace of
its own with only loopback (as the tests do: Orthanc 1.10 listens on every interface), so this
script needs root and Debian's orthanc + orthanc-dicomweb, and uses the tests' Orthanc helper.

- Archive: N DX instances (1024² by default, 12 bits, uncompressed), written to a folder and
  uploaded to Orthanc.
- Jobs (`jobs.embed.run_embed` on a local Ray with --cpus CPUs, the ResNet50 bundle at
  --image-size): the folder; DICOMweb; DICOMweb with --store-results; DIMSE; DIMSE with
  --store-results. Each into a fresh output folder; instances/s over the whole job.
- Latency, one instance at a time in this process: WADO-RS retrieve, C-GET (one association for
  all, and a new association each), STOW-RS and C-STORE of one scan's SR + Secondary Capture,
  the confirming query; and the in-process stages (decode, regression, SR + SC encoding).

    sudo python benchmarks/bench_pacs.py                      # 1,000 instances of 1024²
    sudo python benchmarks/bench_pacs.py --instances 200      # quicker
    sudo python benchmarks/bench_pacs.py --instances 60 --latency-only --out benchmarks/results/pacs-latency.json

Do not run it beside other heavy work: on a 2-core machine any other process moves the figures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]

from common import machine, start_work, summary_ms, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024, help="columns and rows of each DX instance")
    parser.add_argument("--image-size", type=int, default=64, help="the model's input (a cheap model shows the I/O)")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--latency-samples", type=int, default=40)
    parser.add_argument("--latency-only", action="store_true", help="only the per-instance latencies (no Ray jobs)")
    parser.add_argument("--jobs", default=None, help="only these jobs, comma-separated (e.g. 'folder,dicomweb --store-results')")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/clare-bench-pacs"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pacs.json")
    args = parser.parse_args()

    from private_network import enter_private_network, leave_private_network

    if enter_private_network() is None:
        sys.exit("needs root and iproute2: Orthanc runs in a network namespace of its own")
    try:
        run(args)
    finally:
        leave_private_network()


def run(args: argparse.Namespace) -> None:
    import pydicom
    import ray
    from orthanc import PASSWORD, USER, Orthanc
    from pacs_files import dx_instance

    from clare_dist.pacs.credentials import Credentials
    from clare_dist.pacs.dicomweb import DicomWebPacs
    from clare_dist.pacs.dimse import DimsePacs

    bundle_path = start_work(args.workdir, args.image_size, 0)
    shutil.rmtree(args.workdir / "orthanc", ignore_errors=True)
    shutil.rmtree(args.workdir / "runs", ignore_errors=True)
    orthanc = Orthanc(args.workdir / "orthanc").start()
    try:
        folder = args.workdir / "archive"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        start = time.perf_counter()
        for i in range(args.instances):
            data = dx_instance(100_000 + i, size=args.size, study_date="20261130")
            (folder / f"{i:06d}.dcm").write_bytes(data)
            orthanc.upload(data)
        upload_s = time.perf_counter() - start
        print(f"{args.instances} instances of {args.size}² written and uploaded in {upload_s:.1f} s")

        web = DicomWebPacs(orthanc.dicomweb, Credentials(USER, PASSWORD))
        dimse = DimsePacs("127.0.0.1", orthanc.dicom_port, orthanc.aet, "CLAREBENCH")
        latency = measure_latency(web, dimse, bundle_path, args.latency_samples)
        for name, figures in latency.items():
            print(f"{name:>34}: p50 {figures['p50_ms']:8.2f} ms  p99 {figures['p99_ms']:8.2f} ms  (n={figures['n']})")

        jobs = {}
        if not args.latency_only:
            ray.init(num_cpus=args.cpus, include_dashboard=False)
        wanted = None if args.jobs is None else {name.strip() for name in args.jobs.split(",")}
        for name, source in [] if args.latency_only else job_sources(args, web, dimse, folder):
            if wanted is not None and name not in wanted:
                continue
            seconds, rows = timed_embed(bundle_path, source, args.workdir / "runs" / name)
            jobs[name] = {"seconds": seconds, "instances_per_s": args.instances / seconds,
                          "rows": rows["status"].value_counts().to_dict(),
                          "confirmed": int((rows["results_stored"] == "confirmed").sum())}
            print(f"{name:>34}: {seconds:7.1f} s  {args.instances / seconds:6.1f} instances/s  {jobs[name]['rows']}")
        if jobs:
            ray.shutdown()
        if "folder" in jobs:
            for job in jobs.values():
                job["vs_folder"] = job["instances_per_s"] / jobs["folder"]["instances_per_s"]
        write_json({"instances": args.instances, "size": args.size, "image_size": args.image_size, "cpus": args.cpus,
                    "upload_s": upload_s, "latency": latency, "jobs": jobs, "machine": machine(),
                    "pydicom": pydicom.__version__}, args.out)
        print(f"wrote {args.out}")
    finally:
        orthanc.stop()


def job_sources(args, web, dimse, folder):
    from clare_dist.pacs.selection import Selection
    from jobs.embed import PacsSource

    chosen = Selection(study_dates="20261130")
    yield "folder", folder
    yield "dicomweb", PacsSource(web, chosen, False, concurrency=args.cpus)
    yield "dicomweb --store-results", PacsSource(web, chosen, True, concurrency=args.cpus)
    yield "dimse", PacsSource(dimse, chosen, False, concurrency=args.cpus)
    yield "dimse --store-results", PacsSource(dimse, chosen, True, concurrency=args.cpus)


def timed_embed(bundle_path: Path, source, out: Path):
    from jobs.embed import EmbedSettings, run_embed

    start = time.perf_counter()
    rows = run_embed(bundle_path, source, out, EmbedSettings(batch_size=16, k=3))
    return time.perf_counter() - start, rows


def measure_latency(web, dimse, bundle_path: Path, samples: int) -> dict[str, dict[str, float]]:
    """One instance at a time: each protocol's retrieve and store, and the in-process stages between."""
    from clare_dist.bundle import load_bundle
    from clare_dist.encode.identity import algorithm_of
    from clare_dist.pacs.selection import Selection
    from clare_dist.result_files import dicom_results, explanation_picture
    from clare_dist.runtime import run_regressor
    from clare_dist.scans import ScanConfig, preprocess_scan, read_dicom_header
    from clare_dist.screening import Screener

    instances = list(web.query(Selection(study_dates="20261130", max_instances=samples)))
    times: dict[str, list[float]] = {}

    def timed(name, work):
        start = time.perf_counter()
        value = work()
        times.setdefault(name, []).append(time.perf_counter() - start)
        return value

    bundle = load_bundle(bundle_path)
    screener = Screener(bundle, threads=1)
    config = ScanConfig().sized(bundle.image_size)
    algorithm = algorithm_of(bundle)
    for instance in instances:
        data = timed("WADO-RS retrieve", lambda: web.retrieve(instance, 10**9))
        timed("C-GET retrieve (new association)", lambda: dimse.retrieve_many([instance], 10**9))
    timed_all = time.perf_counter()
    dimse.retrieve_many(instances, 10**9)
    times["C-GET retrieve (one association)"] = [(time.perf_counter() - timed_all) / len(instances)] * len(instances)
    for instance in instances[: max(4, samples // 4)]:
        data = web.retrieve(instance, 10**9)
        scan = timed("decode + resize", lambda: preprocess_scan(data, config))
        point = timed("regression (batch of 1)", lambda: run_regressor(screener.session, scan[None], batch_size=1))
        screening = screener.screen([data], [instance.sop_uid])[0]
        header = read_dicom_header(data)
        datasets = timed("SR + Secondary Capture encoding", lambda: dicom_results(
            screening, header, algorithm, lambda: explanation_picture(bundle, None, screening, data)))
        timed("STOW-RS of SR + SC", lambda: web.store(datasets))
        timed("C-STORE of SR + SC", lambda: dimse.store(datasets))
        uids = [str(d.SOPInstanceUID) for d in datasets]
        timed("QIDO-RS confirmation", lambda: web.stored(str(header.StudyInstanceUID), uids))
        timed("C-FIND confirmation", lambda: dimse.stored(str(header.StudyInstanceUID), uids))
        del point
    return {name: summary_ms(values) for name, values in times.items()}


if __name__ == "__main__":
    main()
