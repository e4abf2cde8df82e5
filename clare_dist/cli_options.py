"""The options several `clare-dist` commands share, declared once: Ray, k, the scan limits, the
result folders, fold numbers. A flag means the same and checks the same in every command."""

from __future__ import annotations

import argparse
from pathlib import Path

from clare_dist.cxr14 import N_FOLDS
from clare_dist.errors import UsageError
from clare_dist.result import DEFAULT_K
from clare_dist.scans import ScanConfig

def parse_folds(text: str) -> list[int]:
    folds_help = f"--folds takes fold numbers 0-{N_FOLDS - 1} separated by commas, e.g. 0,1"
    try:
        folds = sorted({int(f) for f in text.split(",") if f.strip()})
    except ValueError:
        raise UsageError(f"{folds_help}; got {text!r}") from None
    if not folds or not all(0 <= f < N_FOLDS for f in folds):
        raise UsageError(f"{folds_help}; got {text!r}")
    return folds


SCAN_LIMITS = ("max_pixels", "max_file_mb", "max_frames", "max_aspect")


def add_ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance (default: all)")


def add_k(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=positive_int, default=DEFAULT_K, help=f"similar known cases per scan (default {DEFAULT_K})")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"takes a positive number; got {value}")
    return value


def add_loss(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--loss", choices=("mse", "distance"), default=default,
                   help=f"the regressor's loss: mse (the paper's) or distance (softmax over the distances to the 26 "
                        f"references, cross-entropy on the scan's combination; clare_dist/losses.py) (default {default})")


def add_result_folders(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dicom-out", type=Path, default=None,
                   help="write, per screened DICOM scan, a DICOM SR (TID 1500) and a Secondary Capture of the explanation, in the "
                        "scan's study, into this folder (named by SOP Instance UID; a rerun rewrites the same files)")
    p.add_argument("--fhir-out", type=Path, default=None,
                   help="write, per screened scan, a FHIR R4 Bundle (DiagnosticReport, an Observation per class, the Device) into this folder")


def add_scan_limits(p: argparse.ArgumentParser) -> None:
    """The site's bounds on one scan, decided from its headers before it is decoded."""
    d = ScanConfig()
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help=f"largest scan frame, columns x rows (default {d.max_pixels:,})")
    p.add_argument("--max-file-mb", type=float, default=d.max_file_mb,
                   help=f"largest scan file in MiB, and what a Deflate DICOM may inflate to (default {d.max_file_mb:g})")
    p.add_argument("--max-frames", type=int, default=d.max_frames, help=f"most frames a DICOM may declare (default {d.max_frames}); the first is screened")
    p.add_argument("--max-aspect", type=float, default=d.max_aspect, help=f"largest ratio of the longer side to the shorter (default {d.max_aspect:g})")


def scan_limits(args: argparse.Namespace) -> ScanConfig:
    try:
        return ScanConfig(**{name: getattr(args, name) for name in SCAN_LIMITS})
    except ValueError as err:
        raise UsageError(str(err)) from None
