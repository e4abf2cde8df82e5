"""A PACS over DICOMweb: QIDO-RS to list instances, WADO-RS to retrieve them, STOW-RS to store results.

dicomweb-client speaks QIDO and STOW. Retrieval is a plain streamed GET instead of its
`retrieve_instance`, which parses the whole answer into a dataset: here the bytes are counted
as they arrive and refused past the scan's byte limit before they are held, and the stored
transfer syntax is asked for (`transfer-syntax=*`) so the PACS never transcodes; every syntax
decodes here. Transient failures (refused or dropped connections, timeouts, 429 and 5xx) are
retried with exponential backoff by urllib3 on the session; the retries outlast a PACS restart.
"""

from __future__ import annotations

import email.message
import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import requests
from pydicom.dataset import Dataset
from pydicom.uid import UID
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from clare_dist.pacs.credentials import Credentials
from clare_dist.pacs.errors import PacsError
from clare_dist.pacs.selection import Instance, Selection
from clare_dist.scans import ScanError

log = logging.getLogger(__name__)

_QIDO_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "BodyPartExamined", "ViewPosition")
_TAGS = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "SOPInstanceUID": "00080018",
         "Modality": "00080060", "BodyPartExamined": "00180015", "ViewPosition": "00185101"}
_ACCEPT_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_RETRIED_STATUSES = (408, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class DicomWebPacs:
    """A DICOMweb service at `url` (the root that QIDO, WADO and STOW share, e.g. .../dicom-web)."""

    url: str
    credentials: Credentials = field(default_factory=Credentials)
    timeout_s: float = 30.0
    retries: int = 6  # with backoff 0.5 s doubling: ~30 s of trying before an instance fails
    backoff_s: float = 0.5
    page_size: int = 1000

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError("pacs_refused", f"--dicomweb {self.public_url!r} is not an http(s) URL of a DICOMweb service")
        if parts.username or parts.password:
            raise PacsError("pacs_auth", "the DICOMweb URL holds credentials; put them in the environment instead "
                                         "(CLARE_PACS_USER and CLARE_PACS_PASSWORD, or CLARE_PACS_TOKEN)")

    @property
    def public_url(self) -> str:
        """The URL as messages and the run's files name it: no user info, no query string."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        return urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path.rstrip("/"), "", ""))

    @property
    def described(self) -> dict[str, Any]:
        return {"dicomweb": self.public_url}

    def __getstate__(self) -> dict[str, Any]:  # sessions stay in the process that made them
        return {k: v for k, v in self.__dict__.items() if k not in ("session", "client")}

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        retry = Retry(total=self.retries, connect=self.retries, read=self.retries, status=self.retries,
                      backoff_factor=self.backoff_s, status_forcelist=_RETRIED_STATUSES, allowed_methods=None,
                      raise_on_status=False, respect_retry_after_header=True)
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
        if self.credentials.token:
            session.headers["Authorization"] = f"Bearer {self.credentials.token}"
        elif self.credentials.user:
            session.auth = (self.credentials.user, self.credentials.password or "")
        return session

    @cached_property
    def client(self):
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(self.url.rstrip("/"), session=self.session, timeout=self.timeout_s)
        client.set_http_retry_params(retry=False)  # the session retries, once, for every request
        return client

    def check(self) -> None:
        """Fail now, with the reason, when the PACS cannot be reached or refuses these credentials."""
        self._call(lambda: self.client.search_for_studies(limit=1), "query the PACS")

    def query(self, selection: Selection) -> Iterator[Instance]:
        """The instances of the selection's modalities and dates, page by page (QIDO-RS limit/offset)."""
        listed = 0
        for modality in selection.modalities:
            filters = {"Modality": modality} | ({"StudyDate": selection.study_dates} if selection.study_dates else {})
            offset = 0
            while True:
                page = self._call(lambda: self.client.search_for_instances(
                    fields=list(_QIDO_FIELDS), search_filters=filters, limit=self.page_size, offset=offset), "query the PACS")
                for item in page:
                    yield _instance(item, modality)
                    listed += 1
                    if selection.max_instances is not None and listed >= selection.max_instances:
                        return
                if len(page) < self.page_size:
                    break
                offset += len(page)
                log.info("listed %d instances so far", listed)

    def retrieve(self, instance: Instance, max_bytes: int) -> bytes:
        """The instance's Part 10 bytes in its stored transfer syntax; ScanError past `max_bytes`."""
        _check_uids(instance)
        url = f"{self.url.rstrip('/')}/{instance.wado_path}"
        # Accept-Encoding identity: a PACS that gzips its answers (Orthanc does by default) spends ~110 ms
        # compressing a 1024² DX that the client then inflates; uncompressed it takes ~6 ms (bench_pacs)
        headers = {"Accept": _ACCEPT_STORED, "Accept-Encoding": "identity"}
        response = self._call(lambda: self.session.get(url, headers=headers, stream=True, timeout=self.timeout_s),
                              "retrieve an instance", instance)
        with response:
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > max_bytes + 64 * 1024:  # the multipart framing is a few hundred bytes
                raise ScanError("file_too_large", f"the PACS announces {declared:,} bytes for this instance, over the "
                                                  f"limit of {max_bytes:,}; raise --max-file-mb to screen it")
            body = bytearray()
            for chunk in response.iter_content(1 << 20):
                body += chunk
                if len(body) > max_bytes + 64 * 1024:
                    raise ScanError("file_too_large", f"the instance is over the limit of {max_bytes:,} bytes; "
                                                      "raise --max-file-mb to screen it")
            return _dicom_part(response.headers.get("Content-Type", ""), bytes(body))

    def store(self, datasets: Sequence[Dataset]) -> None:
        """STOW-RS the datasets into their study (all in one request); a refusal of any raises."""
        if not datasets:
            return
        answer = self._call(lambda: self.client.store_instances(list(datasets)), "store results in the PACS")
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise PacsError("pacs_refused", f"the PACS refused {len(failed)} of {len(datasets)} result objects "
                                            f"(failure reason {', '.join(reasons)})")

    def stored(self, study_uid: str, sop_uids: Sequence[str]) -> set[str]:
        """Which of `sop_uids` a query of the study finds: a store's success alone does not prove the PACS kept them."""
        found = set()
        for uid in sop_uids:
            answer = self._call(lambda: self.client.search_for_instances(
                study_instance_uid=study_uid, search_filters={"SOPInstanceUID": uid}, fields=["SOPInstanceUID"]),
                "query stored results")
            found.update(_value(item, "SOPInstanceUID") for item in answer)
        return found & set(sop_uids)

    def _call(self, request, what: str, instance: Instance | None = None):
        try:
            response = request()
        except requests.HTTPError as err:  # dicomweb-client raised for the status
            raise self._status_error(err.response, what, instance) from None
        except (requests.ConnectionError, requests.Timeout) as err:
            raise PacsError("pacs_unreachable", f"cannot {what}: the PACS at {self.public_url} did not answer after "
                                                f"{self.retries} retries ({type(err).__name__}); check that it runs and "
                                                f"that this node can reach it") from None
        if isinstance(response, requests.Response) and response.status_code >= 400:
            response.close()
            raise self._status_error(response, what, instance)
        return response

    def _status_error(self, response: requests.Response | None, what: str, instance: Instance | None) -> PacsError:
        code = response.status_code if response is not None else 0
        if code in (401, 403):
            return PacsError("pacs_auth", f"cannot {what}: the PACS at {self.public_url} refused {self.credentials.described} "
                                          f"(HTTP {code}); set credentials it accepts")
        if code == 404 and instance is not None:
            return PacsError("pacs_not_found", "the PACS no longer holds this instance (HTTP 404); it was listed by the "
                                               "query and deleted or moved since")
        if code >= 500 or code in _RETRIED_STATUSES:
            return PacsError("pacs_failed", f"cannot {what}: the PACS at {self.public_url} kept failing (HTTP {code}) "
                                            f"after {self.retries} retries; see its logs")
        return PacsError("pacs_refused", f"cannot {what}: the PACS at {self.public_url} answered HTTP {code}")


def _value(item: dict[str, Any], keyword: str) -> str | None:
    values = item.get(_TAGS[keyword], {}).get("Value")
    return str(values[0]) if values else None


def _instance(item: dict[str, Any], modality: str) -> Instance:
    return Instance(study_uid=_value(item, "StudyInstanceUID") or "", series_uid=_value(item, "SeriesInstanceUID") or "",
                    sop_uid=_value(item, "SOPInstanceUID") or "", modality=_value(item, "Modality") or modality,
                    body_part=_value(item, "BodyPartExamined"), view=_value(item, "ViewPosition"))


def _check_uids(instance: Instance) -> None:
    """A UID goes into a URL path only when it is one: a malformed value could name another resource."""
    for name in ("study_uid", "series_uid", "sop_uid"):
        if not UID(getattr(instance, name)).is_valid:
            raise PacsError("pacs_bad_answer", f"the query listed this instance with a malformed {name.replace('_', ' ')}; "
                                               "it was not retrieved (check the PACS's index)")


def _dicom_part(content_type: str, body: bytes) -> bytes:
    """The DICOM object of a WADO-RS answer: the first part of a multipart/related body, or the body itself.

    The body is split at its boundary (RFC 2046) rather than fed to the stdlib's email parser, which
    copies a 2 MB instance line by line."""
    if content_type.lower().startswith("application/dicom"):
        return body
    header = email.message.Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary") if content_type.lower().startswith("multipart/related") else None
    if not isinstance(boundary, str) or not boundary:
        raise PacsError("pacs_bad_answer", f"the PACS answered a retrieval with {content_type or 'no content type'}, "
                                           "not DICOM")
    delimiter = b"--" + boundary.encode("ascii", "replace")
    opening = body.find(delimiter)
    headers_end = body.find(b"\r\n\r\n", opening) if opening >= 0 else -1
    closing = body.find(b"\r\n" + delimiter, headers_end) if headers_end >= 0 else -1
    if closing < 0:
        raise PacsError("pacs_bad_answer", "the PACS answered a retrieval with a multipart body that holds no complete part")
    return body[headers_end + 4:closing]
