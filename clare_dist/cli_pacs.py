"""The command line's PACS parts: `embed` from DICOMweb or DIMSE, and `clare-dist listen`.

Kept apart from cli.py so that the folder commands read on their own; the options are declared
here once and mean the same in both commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clare_dist.errors import UsageError


def add_pacs_source(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("a PACS as the archive (instead of --archive); credentials from CLARE_PACS_USER and "
                             "CLARE_PACS_PASSWORD, or CLARE_PACS_TOKEN, never from the command line")
    g.add_argument("--dicomweb", default=None, metavar="URL", help="DICOMweb root of the PACS (QIDO-RS, WADO-RS, STOW-RS)")
    g.add_argument("--dimse", default=None, metavar="HOST:PORT", help="DICOM node of the PACS (C-FIND, C-GET, C-STORE)")
    g.add_argument("--called-aet", default=None, help="the PACS's AE title (with --dimse)")
    g.add_argument("--calling-aet", default="CLARE", help="this job's AE title (with --dimse; default CLARE)")
    g.add_argument("--modality", default="DX,CR", help="modalities to list (default DX,CR)")
    g.add_argument("--study-date", default=None, metavar="FROM-TO", help="study dates, YYYYMMDD-YYYYMMDD (an end may be open)")
    g.add_argument("--body-part", default="CHEST", help="BodyPartExamined values screened; others are skipped (default CHEST)")
    g.add_argument("--views", default="PA,AP", help="ViewPosition values screened; others (laterals) are skipped (default PA,AP)")
    g.add_argument("--max-instances", type=int, default=None, help="list at most this many instances")
    g.add_argument("--concurrency", type=int, default=2, help="retrieval tasks talking to the PACS at once (default 2)")
    g.add_argument("--store-results", action="store_true",
                   help="store each DICOM scan's SR and Secondary Capture back into its study, and confirm each by a query")


def pacs_source(args: argparse.Namespace):
    """The embed job's PacsSource from the options, or None for a folder archive."""
    chosen = [name for name in ("archive", "dicomweb", "dimse") if getattr(args, name)]
    if len(chosen) != 1:
        raise UsageError("give the archive as exactly one of --archive, --dicomweb or --dimse")
    if chosen == ["archive"]:
        if args.store_results:
            raise UsageError("--store-results needs a PACS (--dicomweb or --dimse); for a folder use --dicom-out")
        return None
    from clare_dist.pacs.selection import Selection
    from jobs.embed import PacsSource

    if getattr(args, "scan_cache", None) is not None:
        raise UsageError("--scan-cache keeps the scans of a folder archive (--archive); a PACS's are retrieved each run")
    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {args.concurrency}")
    selection = Selection.from_options(args.modality, args.study_date, args.body_part, args.views, args.max_instances)
    return PacsSource(pacs_of(args), selection, args.store_results, args.concurrency)


def pacs_of(args: argparse.Namespace, url: str | None = None, address: str | None = None):
    """A DicomWebPacs (with the environment's credentials) or a DimsePacs from the options."""
    from clare_dist.pacs.credentials import Credentials
    from clare_dist.pacs.dicomweb import DicomWebPacs
    from clare_dist.pacs.dimse import DimsePacs

    url = url or getattr(args, "dicomweb", None)
    address = address or getattr(args, "dimse", None)
    if url:
        return DicomWebPacs(url, Credentials.from_environment())
    if not args.called_aet:
        raise UsageError("--dimse needs --called-aet, the PACS's AE title")
    return DimsePacs.from_option(address, args.called_aet, args.calling_aet)


def add_listen_parser(sub) -> None:
    p = sub.add_parser("listen", help="a DICOM storage SCP that screens each received chest image and sends the results on")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--aet", default="CLARE", help="the AE title it answers to (default CLARE)")
    p.add_argument("--port", type=int, required=True, help="the DICOM port to listen on")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--spool", type=Path, required=True,
                   help="folder for received instances and the log table (listener.sqlite); a restart resumes from it")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--store-results-to", default=None, metavar="DICOMWEB_URL", help="STOW-RS the SR and SC here")
    g.add_argument("--forward-to", default=None, metavar="HOST:PORT:AET", help="C-STORE the SR and SC to this DICOM node")
    p.add_argument("--calling-aet", default=None, help="AE title when forwarding (default: --aet)")
    p.add_argument("--serve-url", default=None, help="screen on this running clare-dist serve API instead of in-process")
    p.add_argument("--body-part", default="CHEST", help="BodyPartExamined values screened (default CHEST)")
    p.add_argument("--views", default="PA,AP", help="ViewPosition values screened (default PA,AP)")
    p.add_argument("--modality", default="DX,CR", help="modalities screened (default DX,CR)")
    p.set_defaults(func=cmd_listen)


def cmd_listen(args: argparse.Namespace) -> int:
    from clare_dist.pacs.listener import Listener, ListenerConfig
    from clare_dist.pacs.selection import Selection

    sink = None
    if args.store_results_to:
        sink = pacs_of(args, url=args.store_results_to)
    elif args.forward_to:
        host_port, _, aet = args.forward_to.rpartition(":")
        if not host_port or not aet:
            raise UsageError(f"--forward-to {args.forward_to!r} is not HOST:PORT:AET")
        from clare_dist.pacs.dimse import DimsePacs

        sink = DimsePacs.from_option(host_port, aet, args.calling_aet or args.aet)
    selection = Selection.from_options(args.modality, None, args.body_part, args.views, None)
    config = ListenerConfig(aet=args.aet, host=args.host, port=args.port, spool=args.spool, selection=selection,
                            serve_url=args.serve_url)
    Listener(args.bundle, config, sink).run_forever()
    return 0
