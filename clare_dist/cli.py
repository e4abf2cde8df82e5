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

from clare_dist.cxr14 import (
    FOLD_SEED,
    MetadataError,
    combination_counts,
    format_counts_table,
    label_table,
    read_data_entry,
)
from clare_dist.labels import LabelError
from clare_dist.scans import ScanError

log = logging.getLogger("clare_dist")

LABELS_FILE = "labels.parquet"

# Failures a person can fix from the message alone: printed without a traceback, exit code 2.
USER_ERRORS = (MetadataError, LabelError, ScanError, FileNotFoundError, NotADirectoryError)


def cmd_prepare(args: argparse.Namespace) -> int:
    table = prepare(args.data_entry, args.out, seed=args.seed)
    print(format_counts_table(combination_counts(table)))
    print(f"wrote {Path(args.out) / LABELS_FILE}")
    return 0


def prepare(data_entry: Path, out: Path, seed: int = FOLD_SEED):
    """Data_Entry CSV → labels.parquet (the label table with folds)."""
    raw = read_data_entry(data_entry)
    table = label_table(raw, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / LABELS_FILE, index=False)
    log.info("%d of %d images kept (at most 3 findings), %d patients, 5 folds", len(table), len(raw), table["patient_id"].nunique())
    return table


def cmd_references(args: argparse.Namespace) -> int:
    space = make_references(args.out, seed=args.seed)
    print(f"references: {len(space.references.names)} combinations, all distinct and decoded back to their own vector")
    print(f"minimum pairwise distance (normalised space): {space.min_distance:.4f}")
    print(f"reconstruction MSE (26 combinations): {space.reconstruction_mse:.3g}")
    print(f"seed used: {space.seed_used} (attempt {space.attempts}), trained in {space.seconds:.1f} s")
    print(f"wrote {Path(args.out) / 'references.json'} and {Path(args.out) / 'references.png'}")
    return 0


def make_references(out: Path, seed: int = 0):
    """Train the label autoencoder and write references.json, its weights and references.png."""
    from clare_dist.plots import reference_space_figure, save_figure
    from clare_dist.references import AutoencoderConfig, build_references, save_references

    space = build_references(AutoencoderConfig(seed=seed))
    save_references(space, out)
    save_figure(reference_space_figure(space.references), Path(out) / "references.png")
    return space


def cmd_synth(args: argparse.Namespace) -> int:
    archive = synthesize(args.out, args.n_images, args.size, args.seed, args.dicom)
    print(f"wrote {archive.n_images} images to {archive.image_dir} and {archive.data_entry_csv}")
    return 0


def synthesize(out: Path, n_images: int, size: int, seed: int, dicom: bool):
    from clare_dist.synth import SynthConfig, write_archive

    step = max(1, n_images // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            log.info("synth: %d/%d images", done, total)

    return write_archive(out, SynthConfig(n_images=n_images, size=size, seed=seed, dicom=dicom), progress=progress)


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    archive = synthesize(out / "archive", args.n_images, args.size, args.seed, dicom=False)
    table = prepare(archive.data_entry_csv, out / "prepared")
    space = make_references(out / "references", seed=args.seed)
    print("Table 1 of the synthetic archive (images per combination):")
    print(format_counts_table(combination_counts(table)))
    print(f"references: minimum distance {space.min_distance:.4f}, reconstruction MSE {space.reconstruction_mse:.3g}")
    print(f"demo output in {out.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clare-dist", description="Explainable chest X-ray screening (CLARE-XR).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the whole method on a synthetic archive (the embedded default)")
    p.add_argument("--out", type=Path, default=Path("clare-demo"), help="output directory (default: clare-demo)")
    p.add_argument("--n-images", type=int, default=1200, help="images in the synthetic archive")
    p.add_argument("--size", type=int, default=128, help="side of the synthetic images in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write a synthetic archive in the CXR14 layout")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-images", type=int, required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dicom", action="store_true", help="write 16-bit DICOM (MONOCHROME1 and 2) instead of PNG")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
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
