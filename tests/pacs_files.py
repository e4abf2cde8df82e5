"""DX instances for the PACS tests: fresh UIDs each (Orthanc keeps one copy per SOP Instance UID),
compressed and not, with a lateral and a non-chest image among them."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from clare_dist.synth import encode_dx

SYNTAXES = ("explicit", "jpeg-ls", "jpeg2000", "rle", "jpeg-lossless")


def dx_instance(seed: int, transfer_syntax: str = "explicit", view: str = "PA", body_part: str = "CHEST",
                size: int = 96, study_date: str = "20200101") -> bytes:
    """One DX image of random-looking anatomy; `seed` decides its pixels and UIDs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    stored = ((np.sin(x / (5 + seed % 7)) + np.cos(y / 9) + 2) * 800 + rng.integers(0, 200, (size, size))).astype(np.uint16)
    ds = pydicom.dcmread(io.BytesIO(encode_dx(stored, 12, transfer_syntax=transfer_syntax)))
    source = [f"clare-dist pacs test {seed}"]
    ds.StudyInstanceUID = generate_uid(entropy_srcs=source + ["study"])
    ds.StudyDate = ds.ContentDate = study_date
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=source + ["series"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=source + ["instance"])
    ds.ViewPosition, ds.BodyPartExamined = view, body_part
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def night_of_studies(first_seed: int, count: int, study_date: str = "20200101") -> dict[str, bytes]:
    """`count` frontal chest DX in every syntax, plus one lateral and one skull, of one study date:
    SOP Instance UID → file."""
    files = [dx_instance(first_seed + i, SYNTAXES[i % len(SYNTAXES)], "PA" if i % 2 else "AP", study_date=study_date)
             for i in range(count)]
    files.append(dx_instance(first_seed + count, view="LL", study_date=study_date))
    files.append(dx_instance(first_seed + count + 1, body_part="SKULL", study_date=study_date))
    return {str(pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID): f for f in files}
