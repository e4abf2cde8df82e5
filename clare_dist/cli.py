"""The `clare-dist` command: one subcommand per step of the method, plus the demo that chains them.

Each subcommand parses its arguments into the library's config objects and calls one
library function; nothing here decides anything about the method.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from clare_dist.cli_options import (
    add_k,
    add_loss,
    add_ray_options,
    add_result_folders,
    add_scan_limits,
    parse_folds,
    scan_limits,
)
from clare_dist.cli_pacs import add_listen_parser, add_pacs_source, pacs_source
from clare_dist.cli_serve import add_serve_parser
from clare_dist.cxr14 import FOLD_SEED, combination_counts, format_counts_table
from clare_dist.errors import ClareError, UsageError
from clare_dist.runs import LABELS_FILE
from clare_dist.scans import ScanConfig
from clare_dist.steps.demo import DemoSettings

log = logging.getLogger("clare_dist")

# Failures a person can fix from the message alone: printed without a traceback, exit code 2. A path
# the person named that is not there is one too; anything else is a bug and keeps its traceback.
USER_ERRORS = (ClareError, FileNotFoundError, NotADirectoryError)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def cmd_prepare(args: argparse.Namespace) -> int:
    from clare_dist.steps.prepare import prepare

    table = prepare(args.data_entry, args.out, seed=args.seed)
    print(format_counts_table(combination_counts(table)))
    print(f"wrote {Path(args.out) / LABELS_FILE}")
    return 0


def cmd_references(args: argparse.Namespace) -> int:
    from clare_dist.steps.make_references import make_references

    space = make_references(args.out, seed=args.seed)
    print(f"references: {len(space.references.names)} combinations, all distinct and decoded back to their own vector")
    print(f"minimum pairwise distance (normalised space): {space.min_distance:.4f}")
    print(f"reconstruction MSE (26 combinations): {space.reconstruction_mse:.3g}")
    print(f"layout check: {space.layout_check}")
    if space.self_inconsistent:
        print(f"  no seed of {space.attempts} gave a layout R4 decodes right everywhere; this is the best, and scans "
              "of those combinations are decided wrong even by a perfect regressor")
    print(f"seed used: {space.seed_used} ({space.attempts} seed(s) tried), trained in {space.seconds:.1f} s")
    print(f"wrote {Path(args.out) / 'references.json'} and {Path(args.out) / 'references.png'}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from clare_dist.steps.synthesize import synthesize

    if args.transfer_syntax != "explicit" and not args.dicom:
        raise UsageError("--transfer-syntax encodes DICOM files; add --dicom")
    archive = synthesize(args.out, args.n_images, args.size, args.seed, args.dicom, args.transfer_syntax)
    print(f"wrote {archive.n_images} images to {archive.image_dir} and {archive.data_entry_csv}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole method on the embedded default (clare_dist/steps/demo.py); re-run, it resumes."""
    from clare_dist.steps.demo import run_demo

    settings = DemoSettings(n_images=args.n_images, size=args.size, epochs=args.epochs, backlog=args.backlog, seed=args.seed,
                            loss=args.loss)
    run_demo(Path(args.out), settings, connect=lambda: _connect_ray(args.address, args.num_cpus), say=print)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from clare_dist.runs import init_run
    from clare_dist.training import TrainConfig

    folds = parse_folds(args.folds)
    config = TrainConfig(
        backbone=args.backbone, weights=args.weights, image_size=args.image_size, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, patience=args.patience, seed=args.seed,
        num_workers=args.loader_workers, loss=args.loss,
    )
    init_run(args.out, args.labels, args.references)
    _connect_ray(args.address, args.num_cpus)
    from jobs.train_cv import run_cross_validation

    run_cross_validation(
        args.out / "labels.parquet", args.images, args.out / "references.json", args.out, config, folds=folds,
        max_concurrent=args.max_concurrent, cpus_per_fold=args.cpus_per_fold,
    )
    if not args.no_evaluate:
        _print_evaluation(args.out)
    if not args.no_export:
        _print_export(args.out, args.images, args.export_fold, args.ensemble)
    return 0


def _connect_ray(address: str | None, num_cpus: int | None) -> None:
    from jobs.cluster import connect

    connect(address, num_cpus)


def cmd_evaluate(args: argparse.Namespace) -> int:
    _print_evaluation(args.run, args.folds and parse_folds(args.folds))
    return 0


def _print_evaluation(run: Path, folds: list[int] | None = None) -> None:
    from clare_dist.evaluation_report import evaluation_markdown
    from clare_dist.steps.evaluate import evaluate

    evaluation, paths = evaluate(run, folds)
    print(evaluation_markdown(evaluation))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


def cmd_export(args: argparse.Namespace) -> int:
    _print_export(args.run, args.images, args.fold, args.ensemble, args.int8)
    return 0


def _print_export(run: Path, images: Path, fold: int | None, ensemble: bool, int8: bool = False) -> None:
    from clare_dist.steps.export import export

    bundle = export(run, images, fold, ensemble, int8)
    quantized = bundle.manifest.get("quantization")
    note = f" (int8: R4 agreement {quantized['r4_agreement_with_fp32']:.1%} with fp32 on " \
           f"{quantized['checked_scans']} held-out scans)" if quantized else ""
    print(f"wrote model bundle {bundle.model_version} to {bundle.path}{note}")


def cmd_predict(args: argparse.Namespace) -> int:
    """Screen each scan; a bad one is reported on stderr and the others go on (exit code 1)."""
    import json

    from clare_dist.bundle import load_bundle
    from clare_dist.encode.text import summary
    from clare_dist.screening import Screener, figure_paths

    limits = scan_limits(args)  # a wrong flag is reported before the bundle is loaded
    screener = Screener(load_bundle(args.bundle), limits=limits)
    results = screener.screen_many(args.scans, k=args.k)
    write_files = _result_writer(args, screener, limits)
    plots = figure_paths(args.plot, [r.scan_id for r in results]) if args.plot else [None] * len(results)
    for scan, result, plot in zip(args.scans, results, plots):
        if not result.ok:
            print(f"clare-dist predict: {result.scan_id}: {result.error_kind}: {result.error_reason}", file=sys.stderr)
            continue
        print(json.dumps(result.to_dict()) if args.json else summary(result))
        if plot is not None:
            from clare_dist.plots import save_figure  # matplotlib loads only where a figure is asked for

            save_figure(screener.figure(result, scan, args.images), plot)
            log.info("wrote %s", plot)
        if write_files is not None:
            write_files(result, scan)
    return 1 if any(not r.ok for r in results) else 0


def _result_writer(args: argparse.Namespace, screener, limits: ScanConfig) -> Callable | None:
    """What writes one scan's SR, Secondary Capture and FHIR Bundle for `predict`; None when none is asked for."""
    if args.dicom_out is None and args.fhir_out is None:
        return None
    from clare_dist.encode.identity import algorithm_of
    from clare_dist.result_files import ResultFolders, explanation_picture, write_result_files

    folders, algorithm = ResultFolders(args.dicom_out, args.fhir_out), algorithm_of(screener.bundle)

    def write(result, scan) -> None:
        files = write_result_files(result, scan, algorithm, folders, lambda: explanation_picture(screener.bundle, screener.index, result, scan, args.images, limits),
                                   limits)
        for path in files.paths:
            log.info("wrote %s", path)
        if files.note:
            print(f"clare-dist predict: {result.scan_id}: {files.note}", file=sys.stderr)

    return write


def cmd_embed(args: argparse.Namespace) -> int:
    import pandas as pd

    pacs = pacs_source(args)  # a wrong combination of options fails before Ray starts
    _connect_ray(args.address, args.num_cpus)
    from clare_dist.case_index import build_case_index
    from jobs.embed import EmbedSettings, run_embed

    folders = None
    if args.dicom_out is not None or args.fhir_out is not None:
        from clare_dist.result_files import ResultFolders

        folders = ResultFolders(args.dicom_out, args.fhir_out)
    settings = EmbedSettings(batch_size=args.batch_size, workers=args.workers, k=args.k, limits=scan_limits(args),
                             results=folders, pipeline=args.pipeline, scan_cache=args.scan_cache)
    results = run_embed(args.bundle, pacs or args.archive, args.out, settings)
    counts = results["status"].value_counts()
    skipped = f", {counts['skipped']} skipped" if counts.get("skipped") else ""
    print(f"{len(results)} scans: {counts.get('ok', 0)} screened, {counts.get('error', 0)} failed{skipped}; "
          f"results in {args.out / 'results'}")
    if results["results_stored"].notna().any():
        confirmed = int((results["results_stored"] == "confirmed").sum())
        print(f"results stored back and confirmed for {confirmed} of {int(results['results_stored'].notna().sum())} scans")
    print(f"report: {(args.out / 'report.html').resolve()}")
    if args.build_index:
        if args.labels is None:
            raise UsageError("--build-index needs --labels (the labelled archive's labels.parquet)")
        indexed = build_case_index(args.bundle, results, pd.read_parquet(args.labels))
        print(f"indexed {indexed} known cases into {args.bundle / 'index'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clare-dist", description="Explainable chest X-ray screening (CLARE-XR).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the whole method on a synthetic archive (the embedded default)")
    p.add_argument("--out", type=Path, default=Path("clare-demo"), help="output directory (default: clare-demo)")
    d = DemoSettings()
    p.add_argument("--n-images", type=int, default=d.n_images, help="images in the labelled synthetic archive")
    p.add_argument("--size", type=int, default=d.size, help="side of the images and of the model input, in pixels")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs per phase and fold")
    p.add_argument("--backlog", type=int, default=d.backlog, help="scans in the backlog to screen (4 broken files are added)")
    p.add_argument("--seed", type=int, default=d.seed)
    add_loss(p, d.loss)
    add_ray_options(p)
    p.set_defaults(func=cmd_demo)

    from clare_dist.synth import TRANSFER_SYNTAXES

    p = sub.add_parser("synth", help="write a synthetic archive in the CXR14 layout")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-images", type=int, required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dicom", action="store_true", help="write 16-bit DX DICOM (MONOCHROME1 and 2) instead of PNG")
    p.add_argument("--transfer-syntax", choices=list(TRANSFER_SYNTAXES), default="explicit",
                   help="encoding of the --dicom files (default explicit: uncompressed explicit VR little endian)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="CXR14 Data_Entry CSV -> labels.parquet with 5-class vectors and folds")
    p.add_argument("--data-entry", type=Path, required=True, help="Data_Entry_2017.csv or _v2020.csv, plain or .gz")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=FOLD_SEED, help="fold assignment seed")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("references", help="train the Phase I label autoencoder and write the 26 references")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_references)

    p = sub.add_parser("train", help="train the baseline and the regressor on 5 folds in parallel on Ray, evaluate, export")
    p.add_argument("--labels", type=Path, required=True, help="labels.parquet from `clare-dist prepare`")
    p.add_argument("--images", type=Path, required=True, help="folder holding the scans (any depth, e.g. images_001/images)")
    p.add_argument("--references", type=Path, required=True, help="folder (or file) from `clare-dist references`")
    p.add_argument("--out", type=Path, required=True, help="run directory; re-running the same command resumes it")
    p.add_argument("--backbone", choices=("resnet50", "resnet18"), default="resnet50")
    p.add_argument("--weights", default=None, help="'imagenet' (torchvision cache) or a local .pth file; default random")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=5, help="early stopping: epochs without a better validation loss")
    p.add_argument("--seed", type=int, default=0)
    add_loss(p, "mse")  # `train` is the paper-faithful step; the demo states its own default
    p.add_argument("--folds", default="0,1,2,3,4", help="folds to train, e.g. 0,1,2,3,4")
    p.add_argument("--max-concurrent", type=int, default=None, help="folds at once (default: GPUs, or CPUs / cpus-per-fold)")
    p.add_argument("--cpus-per-fold", type=float, default=1.0)
    p.add_argument("--loader-workers", type=int, default=2, help="data loader processes per fold")
    add_ray_options(p)
    p.add_argument("--export-fold", type=int, default=None, help="fold whose regressor goes into the bundle")
    p.add_argument("--ensemble", action="store_true", help="bundle the mean of all finished folds instead")
    p.add_argument("--no-evaluate", action="store_true")
    p.add_argument("--no-export", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("embed", help="screen an archive on Ray Data: one Parquet row per scan; resumable")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--archive", type=Path, default=None, help="folder of PNG/JPEG/DICOM (any depth) or a manifest")
    p.add_argument("--out", type=Path, required=True, help="output folder; re-running resumes it")
    p.add_argument("--labels", type=Path, default=None, help="labels.parquet of a labelled archive (with --build-index)")
    p.add_argument("--build-index", action="store_true", help="make the labelled archive the bundle's case index")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="ONNX Runtime actors of the staged pipeline")
    p.add_argument("--scan-cache", type=Path, default=None,
                   help="keep each decoded scan (the model's input, 64 KB at 256 px) in this folder, and use the ones "
                        "kept by an earlier run with the same preprocessing instead of decoding again (folders only)")
    p.add_argument("--pipeline", choices=("auto", "fused", "staged"), default="auto",
                   help="fused: decode, regression and finish in one task per batch, one per CPU; staged: decode "
                        "tasks, ONNX Runtime actors, finish tasks (auto: staged on a GPU cluster or from a PACS)")
    add_k(p)
    add_ray_options(p)
    add_scan_limits(p)
    add_result_folders(p)
    add_pacs_source(p)
    p.set_defaults(func=cmd_embed)
    add_listen_parser(sub)

    p = sub.add_parser("evaluate", help="the paper's Tables 2-4 and figures for a run")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--folds", default=None, help="only these finished folds, e.g. 0,1")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="export a run's regressor to ONNX (checked against torch) as a model bundle")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True, help="the run's scans, some of which check the export")
    p.add_argument("--fold", type=int, default=None, help="fold to export (default: the first finished)")
    p.add_argument("--ensemble", action="store_true", help="the mean of all finished folds in one graph")
    p.add_argument("--int8", action="store_true", help="quantise the regressor to int8 (calibrated on training-fold "
                                                       "scans; refused below 99%% R4 agreement with fp32 on the test fold)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="screen scans with a model bundle: decision, top 3, explanation, similar cases")
    p.add_argument("scans", nargs="+", type=Path, help="PNG, JPEG or DICOM files")
    p.add_argument("--bundle", type=Path, required=True, help="model bundle directory (from `clare-dist export`)")
    p.add_argument("--plot", type=Path, default=None,
                   help="write the explanation figure here (several scans: OUT-<scan name>.png)")
    p.add_argument("--json", action="store_true", help="one JSON object per scan (JSON lines) instead of text")
    add_k(p)
    p.add_argument("--images", type=Path, default=None,
                   help="folder the indexed cases' relative paths are resolved in, for thumbnails (default: .)")
    add_scan_limits(p)
    add_result_folders(p)
    p.set_defaults(func=cmd_predict)

    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace], int] = args.func
    start = time.perf_counter()
    try:
        code = func(args)
    except USER_ERRORS as exc:
        print(f"clare-dist {args.command}: error: {exc}", file=sys.stderr)
        return 2
    log.info("%s finished in %.1f s", args.command, time.perf_counter() - start)
    return code
