"""The one result type and its encodings: the Parquet row reads back as the Screening it was
written from, its schema is the one earlier releases wrote (a resumed run appends to their part
files), and the API answer and the text carry the same screening."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clare_dist.encode.api_json import api_answer
from clare_dist.encode.parquet_row import ROW_SCHEMA, from_row, to_table
from clare_dist.encode.text import summary
from clare_dist.result import INTENDED_USE, Screening, SimilarCase
from clare_dist.scans import SCAN_ERROR_KINDS

# distances and points exactly representable in float32, as the Parquet columns store them
SCREENED = Screening(
    scan_id="images/00000001_000.png", model_version="m-1", x=0.25, y=0.75, top3=["Pl", "CaPl", "CaPnPl"],
    top3_distances=[0.015625, 0.03125, 0.5], combination="CaPl", Ca=1, Pa=0, Pn=0, Pl=1, Ot=0,
    explanation="This scan is likely ...", similar_cases=[SimilarCase("00000013_003.png", "CaPl", 0.125)],
    similar_note=None,
)
FAILED = Screening.failed("broken.dcm", "bad_header", "the DICOM Rows holds 2 values: where one number belongs", "m-1")

# The columns part files of earlier releases have (batch.RESULT_SCHEMA before the result type)
EARLIER = pa.schema([
    ("scan_id", pa.string()), ("path", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("x", pa.float32()), ("y", pa.float32()), ("top3", pa.list_(pa.string())), ("top3_distances", pa.list_(pa.float32())),
    ("combination", pa.string()), *[(code, pa.int8()) for code in ("Ca", "Pa", "Pn", "Pl", "Ot")],
    ("explanation", pa.string()),
    ("similar_cases", pa.list_(pa.struct([("case_id", pa.string()), ("combination", pa.string()), ("distance", pa.float32())]))),
    ("similar_note", pa.string()), ("model_version", pa.string()),
])


def test_the_row_schema_is_derived_and_is_what_earlier_part_files_hold_plus_review_flag_and_storage() -> None:
    review = [pa.field("ood_score", pa.float32()), pa.field("needs_review", pa.bool_())]
    stored = pa.field("results_stored", pa.string())
    assert ROW_SCHEMA.equals(pa.schema([*list(EARLIER)[:-1], *review, EARLIER.field("model_version"), stored]))


def test_an_earlier_part_file_reads_back_with_the_flag_unchecked(tmp_path) -> None:
    from clare_dist.batch import RESULTS_DIR, read_results

    (tmp_path / RESULTS_DIR).mkdir()
    earlier = to_table([SCREENED], ["/archive/a.png"]).drop_columns(["ood_score", "needs_review", "results_stored"]).cast(EARLIER)
    pq.write_table(earlier, tmp_path / RESULTS_DIR / "part-0.parquet")
    rows = read_results(tmp_path)
    assert list(rows.columns) == ROW_SCHEMA.names
    assert from_row(rows.iloc[0], SCAN_ERROR_KINDS) == SCREENED  # needs_review and ood_score: None, not checked
    flagged = replace(SCREENED, scan_id="images/00000002_000.png", ood_score=2.5, needs_review=True)
    pq.write_table(to_table([flagged], ["/archive/b.png"]), tmp_path / RESULTS_DIR / "part-1.parquet")  # a resumed run
    both = read_results(tmp_path)
    assert [from_row(row, SCAN_ERROR_KINDS) for _, row in both.iterrows()] == [SCREENED, flagged]


def test_a_skipped_scan_and_its_stored_results_read_back() -> None:
    skipped = Screening.skipped("1.2.3", "not_frontal", "ViewPosition is LL, not PA,AP", "m-1")
    table = to_table([SCREENED, skipped], ["studies/1/series/2/instances/3", "studies/1/series/2/instances/4"],
                     ["confirmed", None]).to_pandas()
    assert list(table["status"]) == ["ok", "skipped"]
    assert table["results_stored"][0] == "confirmed" and table["results_stored"].isna()[1]
    back = from_row(table.iloc[1], ("not_frontal",))
    assert back == skipped and not back.ok


def test_rows_read_back_as_the_screenings_they_were_written_from(tmp_path) -> None:
    pq.write_table(to_table([SCREENED, FAILED], ["/archive/a.png", "/archive/broken.dcm"]), tmp_path / "part.parquet")
    table = pq.read_table(tmp_path / "part.parquet")
    assert table.schema.equals(ROW_SCHEMA)
    rows = table.to_pandas()
    assert rows["error"].isna().tolist() == [True, False]
    assert rows["error"][1] == "bad_header: the DICOM Rows holds 2 values: where one number belongs"
    assert from_row(rows.iloc[0], SCAN_ERROR_KINDS) == SCREENED
    assert from_row(rows.iloc[1], SCAN_ERROR_KINDS) == FAILED  # the reason keeps its own ": "


def test_an_error_cell_of_no_known_kind_is_kept_whole() -> None:
    row = {"scan_id": "x", "model_version": "m", "status": "error", "error": "worker lost"}
    assert (from_row(row, SCAN_ERROR_KINDS).error_kind, from_row(row, SCAN_ERROR_KINDS).error_reason) == ("other", "worker lost")


def test_json_round_trip_and_the_api_answer() -> None:
    assert Screening.from_dict(json.loads(json.dumps(SCREENED.to_dict()))) == SCREENED
    answer = api_answer(SCREENED, "req-1")
    assert answer["decision"] == "CaPl" and answer["classes"] == {"Ca": 1, "Pa": 0, "Pn": 0, "Pl": 1, "Ot": 0}
    assert answer["top3"][0] == {"combination": "Pl", "distance": 0.015625} and answer["intended_use"] == INTENDED_USE
    assert answer["similar_cases"] == [{"case_id": "00000013_003.png", "combination": "CaPl", "distance": 0.125}]
    with pytest.raises(ValueError, match="not screened"):
        api_answer(FAILED, "req-2")


def test_the_text_summary_says_what_the_screening_says() -> None:
    text = summary(SCREENED)
    assert text.startswith("images/00000001_000.png: CaPl") and "Pl (0.016)" in text and "00000013_003.png" in text
    assert INTENDED_USE in text
    assert summary(FAILED) == f"broken.dcm: not screened (bad_header): {FAILED.error_reason}"
