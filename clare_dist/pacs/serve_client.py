"""Screening one received instance on a running `clare-dist serve` API (the listener's `--serve-url`).

The model then runs where the API's replicas run (a GPU node, a scaled Serve app), and the
listener only receives, encodes and sends on. The API's JSON answer is read back
(`encode.api_json.screening_from_answer`) into the same Screening the in-process path makes, so the SR and Secondary Capture do not depend on where the
model ran. A refused scan (4xx) is that instance's failure; an API that is down is retried later.
"""

from __future__ import annotations

import os

import requests

from clare_dist.encode.api_json import screening_from_answer
from clare_dist.pacs.errors import PacsError
from clare_dist.result import Screening

ENV_API_TOKEN = "CLARE_API_TOKEN"  # serve.contract.TOKEN_ENV: the API's bearer token, from the environment


def screen_on_api(serve_url: str, data: bytes, scan_id: str, model_version: str) -> Screening:
    headers = {"Content-Type": "application/dicom", "Accept": "application/json"}
    if os.environ.get(ENV_API_TOKEN):
        headers["Authorization"] = f"Bearer {os.environ[ENV_API_TOKEN]}"
    try:
        answer = requests.post(f"{serve_url.rstrip('/')}/v1/predict", data=data, headers=headers, timeout=120)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise PacsError("pacs_unreachable", f"the screening API at {serve_url} did not answer ({type(err).__name__})") from None
    if answer.status_code >= 500 or answer.status_code == 429:
        raise PacsError("pacs_failed", f"the screening API at {serve_url} answered HTTP {answer.status_code}")
    body = answer.json()
    if answer.status_code != 200:
        kind, detail = (str(body.get("error")), body.get("detail")) if isinstance(body, dict) else ("internal", None)
        return Screening.failed(scan_id, kind, str(detail or f"HTTP {answer.status_code}"), model_version)
    return screening_from_answer(body, scan_id)
