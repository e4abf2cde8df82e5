"""`clare-dist listen`: a DICOM storage SCP that screens chest images as a modality or router sends them.

This is how an AI node meets a hospital's image flow: the router forwards each new image, the
node answers the C-STORE at once (a sender must never wait for a model), screens the image
later on its own thread, and sends the SR and Secondary Capture on, to a DICOMweb service
(STOW-RS) or a DICOM node (C-STORE), confirming each by a query. Received objects go to the
spool folder before the sender is answered and every one has a row in the log table
(listener_log.py), so a killed listener loses nothing: a restart resumes every row not done.
A sink that is down delays results (they are retried), it never drops them.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import UID

from clare_dist.atomic import atomic_path
from clare_dist.bundle import load_bundle
from clare_dist.errors import ClareError
from clare_dist.pacs.dimse import nodelay
from clare_dist.pacs.errors import PacsError
from clare_dist.pacs.listener_log import FAILED, KEPT, SCREENED, SKIPPED, STORED, ListenerLog
from clare_dist.pacs.selection import Instance, Selection
from clare_dist.pacs.stages import CONFIRMED, Pacs, result_datasets, store_confirmed
from clare_dist.result import Screening
from clare_dist.scans import ScanConfig, ScanError, read_dicom_header
from clare_dist.scans.files import load_bytes

log = logging.getLogger(__name__)

INCOMING, RESULTS = "incoming", "results"
_SUCCESS, _OUT_OF_RESOURCES, _CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


@dataclass(frozen=True)
class ListenerConfig:
    aet: str = "CLARE"
    host: str = "127.0.0.1"
    port: int = 11112
    spool: Path = Path("clare-listener")
    selection: Selection = field(default_factory=Selection)
    serve_url: str | None = None  # screen on a running API instead of in-process
    limits: ScanConfig = ScanConfig()
    retry_s: float = 5.0  # how long a result waits before another try when the sink is down


class Listener:
    """The SCP, its worker thread and its log; `start`/`stop` for tests and services, `run_forever` for the CLI."""

    def __init__(self, bundle_path: Path, config: ListenerConfig, sink: Pacs | None = None) -> None:
        self.config, self.sink = config, sink
        self.bundle = load_bundle(bundle_path)
        self.limits = self.bundle.scan_config(config.limits)
        self.log = ListenerLog(config.spool)
        (config.spool / INCOMING).mkdir(parents=True, exist_ok=True)
        (config.spool / RESULTS).mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._server: Any = None
        self._worker: threading.Thread | None = None
        self._screener: Any = None

    def start(self) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
        from pynetdicom.sop_class import Verification

        _config.STORE_RECV_CHUNKED_DATASET = True  # received objects go to disk as they arrive, never whole into memory
        self._recover()
        ae = AE(ae_title=self.config.aet)
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._worker = threading.Thread(target=self._work, name="clare-listener-worker", daemon=True)
        self._worker.start()
        self._server = ae.start_server((self.config.host, self.config.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, nodelay)])
        log.info("listening as %s on %s:%d; spool %s", self.config.aet, self.config.host, self.config.port, self.config.spool)

    def stop(self) -> None:
        """Stop taking associations, finish the instance in hand, and close the log; the rest waits in the spool."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stopping.set()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=120)
        self.log.close()
        log.info("listener stopped")

    def run_forever(self) -> None:
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        print(f"listening as {self.config.aet} on {self.config.host}:{self.config.port}; log table "
              f"{self.log.path}; Ctrl-C stops", flush=True)
        done.wait()
        self.stop()

    def _recover(self) -> None:
        """Queue what a previous run left: rows not done, and spooled files that got no row (a kill in between)."""
        known = self.log.known_files()
        for file in sorted((self.config.spool / INCOMING).glob("*.dcm")):
            if str(file) not in known:
                self.log.received(file.stem, file)
        pending = self.log.pending()
        if pending:
            log.info("resuming %d instances received before a restart", len(pending))
        for item in pending:
            self._queue.put(item)

    def _on_store(self, event: Any) -> int:
        """Spool, log, answer: the sender waits for nothing else."""
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        if not UID(sop_uid).is_valid:
            log.warning("refused an instance with a malformed SOP Instance UID")
            return _CANNOT_UNDERSTAND
        file = self.config.spool / INCOMING / f"{sop_uid}.dcm"
        try:
            data = load_bytes(event.dataset_path, self.limits.max_file_bytes)
        except ScanError as err:
            self.log.received(sop_uid, file)
            self.log.mark(sop_uid, FAILED, f"{err.kind}: {err.message}")
            return _OUT_OF_RESOURCES
        with atomic_path(file) as tmp:
            tmp.write_bytes(data)
        self.log.received(sop_uid, file)
        self._queue.put((sop_uid, str(file)))
        return _SUCCESS

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            try:
                self._process(*item)
            except PacsError as err:  # the sink (or the screening API) cannot be used now: the instance waits in the spool
                log.warning("one instance not done yet (%s: %s); retrying in %.0f s", err.kind, err.message, self.config.retry_s)
                self.log.note(item[0], f"waiting: {err.kind}: {err.message}")
                threading.Timer(self.config.retry_s, self._queue.put, (item,)).start()
            except Exception:  # noqa: BLE001 - one instance never stops the listener; its row says so
                log.exception("an instance could not be processed")
                self.log.mark(item[0], FAILED, "internal: see the listener's log")

    def _process(self, sop_uid: str, file: str) -> None:
        path = Path(file)
        try:
            data = load_bytes(path, self.limits.max_file_bytes)
            header = read_dicom_header(data, self.limits)
        except ScanError as err:
            self._finish(sop_uid, path, FAILED, f"{err.kind}: {err.message}")
            return
        if header is None:
            self._finish(sop_uid, path, FAILED, "not_an_image: the received object is not DICOM")
            return
        skip = self.config.selection.skip(Instance.from_header(header, sop_uid=sop_uid))
        if skip:
            self._finish(sop_uid, path, SKIPPED, f"{skip[0]}: {skip[1]}")
            return
        screening = self._screen(data, sop_uid)
        if not screening.ok:
            self._finish(sop_uid, path, FAILED, f"{screening.error_kind}: {screening.error_reason}")
            return
        self.log.mark(sop_uid, SCREENED, decision=screening.combination)
        index = self._screener.index if self._screener is not None else None
        try:
            from clare_dist.result_files import batch_pictures

            picture = batch_pictures(self.bundle, index, [screening], [data], self.limits)[0]
            datasets = result_datasets(screening, header, self.bundle, picture)
        except ClareError as err:
            self._finish(sop_uid, path, FAILED, f"results not made: {err}")
            return
        if self.sink is None:
            for dataset in datasets:
                with atomic_path(self.config.spool / RESULTS / f"{dataset.SOPInstanceUID}.dcm") as tmp:
                    dataset.save_as(tmp, enforce_file_format=True)
            self._finish(sop_uid, path, KEPT, f"results in {self.config.spool / RESULTS}")
            return
        outcome = store_confirmed(self.sink, datasets, str(header.StudyInstanceUID))
        self._finish(sop_uid, path, STORED if outcome == CONFIRMED else FAILED, outcome)

    def _screen(self, data: bytes, sop_uid: str) -> Screening:
        if self.config.serve_url:
            from clare_dist.pacs.serve_client import screen_on_api

            return screen_on_api(self.config.serve_url, data, sop_uid, self.bundle.model_version)
        if self._screener is None:
            from clare_dist.screening import Screener

            self._screener = Screener(self.bundle, threads=1, limits=self.config.limits)
        return self._screener.screen_many([data], [sop_uid])[0]

    def _finish(self, sop_uid: str, path: Path, state: str, detail: str) -> None:
        self.log.mark(sop_uid, state, detail)
        path.unlink(missing_ok=True)
        log.info("instance %s", state)
