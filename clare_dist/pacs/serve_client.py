"""Screening one received instance on a running `clare-dist serve` API (the listener's `--serve-url`).

The model then runs where the API's replicas run (a GPU node, a scaled Serve app), and the
listener only receives, encodes and sends on. The API's JSON answer is read back
(`encode.api_json.screening_from_answer`) into the same Screening the in-process path makes, so
the SR and Secondary Capture do not depend on where the model ran.

Only the scan's own refusals (413 too large, 422 cannot be screened) fail that instance. Every
other answer says the API is not reachable as configured (down, overloaded, stopping, a wrong
URL or token, another server) and raises PacsError, so the instance waits in the spool and is
tried again. So does an answer from another model than the listener's bundle: its SR would name
the listener's algorithm beside another model's findings.
"""

from __future__ import annotations

import os

import requests

from clare_dist.encode.api_json import screening_from_answer
from clare_dist.pacs.errors import PacsError
from clare_dist.result import Screening

ENV_API_TOKEN = "CLARE_API_TOKEN"  # serve.contract.TOKEN_ENV: the API's bearer token, from the environment
SCAN_REFUSALS = (413, 422)  # the scan itself was refused: that instance's failure


def screen_on_api(serve_url: str, data: bytes, scan_id: str, model_version: str) -> Screening:
    """The screening of one DICOM instance by the API at `serve_url`, which must run `model_version`."""
    url = f"{serve_url.rstrip('/')}/v1/predict"
    headers = {"Content-Type": "application/dicom", "Accept": "application/json"}
    if os.environ.get(ENV_API_TOKEN):
        headers["Authorization"] = f"Bearer {os.environ[ENV_API_TOKEN]}"
    try:
        answer = requests.post(url, data=data, headers=headers, timeout=120)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise PacsError("pacs_unreachable", f"the screening API at {serve_url} did not answer ({type(err).__name__})") from None
    try:
        body = answer.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise PacsError("pacs_bad_answer", f"{url} answered HTTP {answer.status_code} without the API's JSON "
                                           f"({answer.headers.get('content-type', 'no content type')}): is --serve-url a clare-dist serve?")
    if answer.status_code in SCAN_REFUSALS:
        return Screening.failed(scan_id, str(body.get("error")), str(body.get("detail") or f"HTTP {answer.status_code}"),
                                model_version)
    if answer.status_code != 200:
        kind = "pacs_auth" if answer.status_code in (401, 403) else "pacs_failed" if answer.status_code >= 500 else "pacs_refused"
        retry = f", Retry-After {answer.headers['Retry-After']} s" if "Retry-After" in answer.headers else ""
        raise PacsError(kind, f"the screening API at {serve_url} answered HTTP {answer.status_code} "
                              f"({body.get('error')}: {body.get('detail')}{retry})")
    if body.get("model_version") != model_version:
        raise PacsError("pacs_refused", f"the screening API at {serve_url} runs model {body.get('model_version')}, the "
                                        f"listener's bundle is {model_version}: its results would name the wrong model; "
                                        f"give the listener the bundle the API serves")
    try:
        return screening_from_answer(body, scan_id)
    except (KeyError, TypeError) as err:
        raise PacsError("pacs_bad_answer", f"{url} answered 200 without a screening ({type(err).__name__}: {err})") from None
