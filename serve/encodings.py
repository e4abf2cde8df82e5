"""The screening as the DICOM SR or the FHIR Bundle, for a client that asked for one (Accept).

Runs in a worker thread of the ingress (highdicom and the FHIR models are pure Python and take
milliseconds). The SR goes into the scan's study, so it needs the scan's DICOM header, read
again from the uploaded bytes under the same limits; an upload that is not DICOM has no study,
and asking for its SR is answered 422 with the reason, never with an invented study.
"""

from __future__ import annotations

import json

from clare_dist.encode.dicom_sr import screening_sr
from clare_dist.encode.fhir import screening_bundle
from clare_dist.encode.identity import Algorithm
from clare_dist.errors import ClareError
from clare_dist.result import Screening
from clare_dist.result_files import dicom_bytes, study_uid
from clare_dist.scans import ScanConfig, ScanError, read_dicom_header
from serve.contract import DICOM, FHIR
from serve.requests import APIError


def encoded_answer(screening: Screening, body: bytes, media: str, algorithm: Algorithm, limits: ScanConfig) -> bytes:
    """The answer's body in `media` (DICOM or FHIR); APIError 422 where this scan cannot have it."""
    try:
        header = read_dicom_header(body, limits)
    except ScanError as err:  # decoded a moment ago; a header that fails now is this scan's problem
        raise APIError(422, err.kind, err.message) from None
    try:
        if media == DICOM:
            if header is None:
                raise APIError(422, "not_dicom", "the scan is a PNG or JPEG, which belongs to no DICOM study, so there is no "
                                                 "study to put an SR into; ask for application/json or application/fhir+json")
            return dicom_bytes(screening_sr(screening, header, algorithm))
        if media == FHIR:
            return json.dumps(screening_bundle(screening, algorithm, study_uid(header))).encode()
    except APIError:
        raise
    except ClareError as err:  # the source lacks what the result must carry; the message names it
        raise APIError(422, "cannot_encode", str(err)) from None
    raise ValueError(f"no encoder for {media}")
