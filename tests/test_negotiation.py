"""The Accept header picks the screening's encoding: JSON, the DICOM SR or the FHIR Bundle."""

import pytest

from serve.negotiation import DICOM, FHIR, JSON, negotiate
from serve.requests import APIError


@pytest.mark.parametrize("accept, chosen", [
    (None, JSON), ("", JSON), ("*/*", JSON), ("application/*", JSON), ("application/json", JSON),
    ("application/dicom", DICOM), ("application/fhir+json", FHIR), ("Application/DICOM", DICOM),
    ("text/html, application/dicom;q=0.9, */*;q=0.1", DICOM),
    ("application/json;q=0.5, application/fhir+json", FHIR),
    ("application/fhir+json;q=0.8, application/dicom;q=0.8", FHIR),  # equal q: the client's order
    ("application/dicom;q=0, application/json", JSON),
    ("image/png, */*;q=0.2", JSON),
])
def test_the_accepted_type_with_the_highest_quality_wins(accept, chosen):
    assert negotiate(accept) == chosen


@pytest.mark.parametrize("accept", ["image/png", "text/html, text/plain", "application/dicom;q=0", "application/xml;q=1"])
def test_a_client_that_accepts_none_of_them_gets_406_with_the_list(accept):
    with pytest.raises(APIError) as refused:
        negotiate(accept)
    assert refused.value.status == 406 and refused.value.error == "not_acceptable"
    assert all(media in refused.value.detail for media in (JSON, DICOM, FHIR))
