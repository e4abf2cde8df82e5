"""Which rows a rerun delivers again, and how the newest delivery reads back over the row (no PACS
here: tests/test_embed_pacs.py delivers again into a real Orthanc)."""

from __future__ import annotations

from dataclasses import replace

import pyarrow.parquet as pq

from clare_dist.batch import RESULTS_DIR, read_results
from clare_dist.encode.parquet_row import to_table
from clare_dist.pacs.redelivery import screenings_of, undelivered, write_deliveries
from clare_dist.result import Screening

from test_result import SCREENED


def test_the_rows_whose_results_the_pacs_lacks_and_the_newest_delivery_over_them(tmp_path) -> None:
    scans = [replace(SCREENED, scan_id=f"1.2.{i}") for i in range(5)]
    skipped = Screening.skipped("1.2.9", "not_frontal", "ViewPosition is LL, not PA,AP", "m-1")
    stored = ["confirmed", "failed: pacs_unreachable: the PACS did not answer", "not made: no StudyInstanceUID",
              "stored, not confirmed: 2 of 2 missing", None]
    (tmp_path / RESULTS_DIR).mkdir()
    pq.write_table(to_table([*scans, skipped], ["p"] * 6, [*stored, None]), tmp_path / RESULTS_DIR / "part-0.parquet")
    rows = read_results(tmp_path)

    again = undelivered(rows)  # a failure or an unconfirmed store, of a screened scan: not what cannot be made
    assert list(again["scan_id"]) == ["1.2.1", "1.2.3"]
    assert screenings_of(again) == [scans[1], scans[3]]  # the same screening, to make the same objects

    write_deliveries(tmp_path, ["1.2.1", "1.2.3"], ["failed: pacs_unreachable: again", "confirmed"])
    write_deliveries(tmp_path, ["1.2.1"], ["confirmed"])
    assert write_deliveries(tmp_path, [], []) is None  # nothing to deliver: no file
    after = read_results(tmp_path)
    assert list(after["results_stored"])[:4] == ["confirmed", "confirmed", stored[2], "confirmed"]  # the newest
    assert after["results_stored"][4:].isna().all()
    assert after.drop(columns="results_stored").equals(rows.drop(columns="results_stored"))
    assert undelivered(after).empty
