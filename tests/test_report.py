"""The run report: one self-contained HTML page whose tables say exactly what the results say.

Results are made by the batch stages without Ray (list → decode → finish → Parquet → read back).
The regression stage is replaced by points placed near the references: an untrained regressor
puts every scan in about the same place, and the report is to be tried on varied decisions.
"""

from __future__ import annotations

import base64
import io
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clare_dist import report
from clare_dist.batch import (
    RESULTS_DIR,
    decode_batch,
    finish_batch,
    inputs_table,
    list_archive,
    read_results,
)
from clare_dist.bundle import Bundle, load_bundle
from clare_dist.result import INTENDED_USE
from clare_dist.labels import COMBINATIONS
from clare_dist.report import choose_sample, write_report
from clare_dist.scans import ScanConfig
from clare_dist.screening import NO_INDEX_NOTE
from clare_dist.synth import write_broken_scans
from clare_dist.triage import worklist

EVIL = "<script>alert(1)</script>"
PNG_DATA = "data:image/png;base64,"


class Page(HTMLParser):
    """What a browser would see: tags, table rows (not head or foot) by table id, figure captions, text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.tables: dict[str | None, list[list[str]]] = {}
        self.captions: list[str] = []
        self.text: list[str] = []
        self._table = self._part = self._row = self._cell = self._caption = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag in ("thead", "tbody", "tfoot"):
            self._part = tag
        elif tag == "tr" and self._part not in ("thead", "tfoot"):
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "figcaption":
            self._caption = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag in ("thead", "tbody", "tfoot"):
            self._part = None
        elif tag == "table":
            self._table = None
        elif tag == "figcaption":
            self.captions.append("".join(self._caption))
            self._caption = None

    def handle_data(self, data):
        self.text.append(data)
        for part in (self._cell, self._caption):
            if part is not None:
                part.append(data)

    def explained_ids(self) -> list[str]:
        """Scan ids of the explained sample, in page order (each caption starts "scan id: ...")."""
        figures = sum(1 for tag, attrs in self.tags if tag == "figure" and attrs.get("class") == "explained")
        return [caption.split(": ", 1)[0] for caption in self.captions[-figures:]] if figures else []


def read_page(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    return text, Page(text)


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Bundle:
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def archive(tiny_archive, tmp_path_factory) -> Path:
    """16 good scans (one named like a script) and 5 broken files (one named like a script)."""
    root = tmp_path_factory.mktemp("backlog")
    pngs = sorted((tiny_archive / "archive" / "images").glob("*.png"))
    (root / "scans").mkdir()
    for png in pngs[:15]:
        shutil.copy(png, root / "scans" / png.name)
    evil = root / "<script>alert(1)<"  # with the file below: the scan id "<script>alert(1)</script>.png"
    evil.mkdir()
    shutil.copy(pngs[15], evil / "script>.png")
    (evil / "script> empty.png").write_bytes(b"")
    write_broken_scans(root / "broken")
    return root


def screen_archive(archive: Path, bundle: Bundle, out: Path, index=None) -> pd.DataFrame:
    """The batch stages without Ray, written as a Parquet part and read back as the job does."""
    inputs = inputs_table(list_archive(archive))
    decoded = decode_batch({column: inputs[column].to_numpy() for column in inputs}, ScanConfig(size=bundle.image_size))
    batch = pd.DataFrame({column: decoded[column] for column in ("scan_id", "path", "status", "error_kind", "error_reason")})
    refs = bundle.references.coords
    batch["x"] = [refs[i % len(refs), 0] + 0.01 for i in range(len(batch))]
    batch["y"] = [refs[i % len(refs), 1] - 0.01 for i in range(len(batch))]
    batch["ood_score"] = np.where(np.arange(len(batch)) % 5 == 2, 2.5 + np.arange(len(batch)), 0.5).astype(np.float32)
    rows = finish_batch(batch, bundle.references, bundle.model_version, index=index, k=4)
    (out / RESULTS_DIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, out / RESULTS_DIR / "part-0.parquet")
    return read_results(out)


@pytest.fixture(scope="module")
def case_index(tiny_archive, bundle):
    """Known cases: the labelled archive near its references, paths relative to the archive, one moved."""
    from clare_dist.case_index import CaseIndex

    labels = pd.read_parquet(tiny_archive / "prepared" / "labels.parquet")
    refs = dict(zip(bundle.references.names, bundle.references.coords))
    offsets = np.random.default_rng(0).normal(0, 0.02, size=(len(labels), 2))
    xy = np.stack([refs[name] for name in labels["combination"]]) + offsets
    paths = [f"images/{name}" for name in labels["image_index"]]
    paths[0] = "moved/away.png"
    return CaseIndex.build(pd.DataFrame({
        "case_id": labels["image_index"], "path": paths, "combination": labels["combination"],
        "x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32), "fold": labels["fold"].astype(int),
    }))


@pytest.fixture(scope="module")
def screened(archive, bundle, case_index, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("screened")
    return out, screen_archive(archive, bundle, out, case_index)


@pytest.fixture(scope="module")
def written(screened, bundle, case_index, tiny_archive) -> tuple[pd.DataFrame, str, Page]:
    out, results = screened
    path = write_report(out, results, bundle, case_index, images_root=tiny_archive / "archive", sample=6)
    assert path == out / "report.html"
    return (results, *read_page(path))


def test_the_fixture_is_what_the_tests_need(screened):
    _, results = screened
    assert len(results) == 16 + 5 and (results["status"] == "error").sum() == 5
    assert results.loc[results["status"] == "ok", "combination"].nunique() >= 6
    assert EVIL + ".png" in set(results["scan_id"]) and EVIL + " empty.png" in set(results["scan_id"])


def test_the_page_is_self_contained(written):
    _, text, page = written
    assert text.startswith("<!DOCTYPE html>")
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(images) == 1 + 6  # the reference space and the sample
    for src in images:
        assert src.startswith(PNG_DATA)
        picture = Image.open(io.BytesIO(base64.b64decode(src[len(PNG_DATA):], validate=True)))
        assert picture.format == "PNG" and picture.size[0] > 300
        picture.load()
    links = [(tag, name, value) for tag, attrs in page.tags for name, value in attrs.items()
             if name in ("src", "href", "srcset", "action", "data") and not (value or "").startswith(PNG_DATA)]
    assert links == []
    assert not {tag for tag, _ in page.tags} & {"script", "link", "iframe", "object", "embed", "base"}
    assert "url(" not in text and "@import" not in text


def test_the_reading_worklist_lists_the_likeliest_abnormal_scans_first(written, bundle):
    results, _, page = written
    rows = page.tables["worklist"]
    order = worklist(results, bundle.references)
    flagged = int(results["needs_review"].eq(True).sum())
    assert len(rows) == min(len(results), 25) == 21  # every scan of this run, the 5 failed ones last
    assert [r[1] for r in rows] == order["scan_id"].tolist()  # names shown as text, escaped (the EVIL one)
    scores = [float(r[2]) for r in rows if r[2]]
    assert 0 < flagged < 16 and len(scores) == 16 - flagged and scores == sorted(scores, reverse=True)
    assert all(r[4].startswith("Needs human review: ") for r in rows[16 - flagged:16])
    assert all(r[4].startswith("not screened (") for r in rows[16:])


def test_scans_that_need_human_review_are_listed_apart_most_unusual_first(written):
    results, _, page = written
    flagged = results[results["needs_review"].eq(True)].sort_values("ood_score", ascending=False)
    assert [r[0] for r in page.tables["needs-review"]] == flagged["scan_id"].tolist()
    assert [float(r[1]) for r in page.tables["needs-review"]] == flagged["ood_score"].round(2).tolist()
    assert dict(page.tables["summary"])["Needs human review"] == str(len(flagged))


def test_results_without_the_ood_score_say_they_were_not_checked(archive, bundle, tmp_path):
    results = screen_archive(archive, bundle, tmp_path).assign(needs_review=None, ood_score=np.nan)
    _, page = read_page(write_report(tmp_path, results, bundle))
    assert "needs-review" not in page.tables
    assert "Not checked for out-of-distribution input: the model bundle has no OOD score" in "".join(page.text)
    assert dict(page.tables["summary"])["Needs human review"] == "not checked (a model bundle without the OOD score)"


def test_summary_states_counts_model_and_intended_use(written, bundle):
    results, _, page = written
    summary = dict(page.tables["summary"])
    assert summary["Scans"] == "21" and summary["Screened (ok)"] == "16" and summary["Failed (error)"] == "5"
    assert summary["Model version"] == bundle.model_version
    assert pd.Timestamp(summary["Report written"]).tzinfo is not None
    assert f"Intended use: {INTENDED_USE}." in "".join(page.text)
    assert "another model version" not in "".join(page.text)


def test_rows_of_another_model_are_pointed_out(screened, bundle, tmp_path):
    _, results = screened
    mixed = results.assign(model_version=[bundle.model_version] * (len(results) - 1) + ["m-" + EVIL])
    text, _ = read_page(write_report(tmp_path, mixed, bundle, sample=0))
    assert "made by another model version: m-&lt;script&gt;alert(1)&lt;/script&gt;." in text


def test_counts_equal_the_results_in_canonical_order(written):
    results, _, page = written
    ok = results[results["status"] == "ok"]
    rows = page.tables["counts"]
    expected = ok["combination"].value_counts()
    assert {name: int(count) for name, count, _ in rows} == expected.to_dict()
    names = [name for name, _, _ in rows]
    assert names == sorted(names, key=lambda n: (COMBINATIONS.index(n) if n in COMBINATIONS else 99, n))
    assert [float(share) for _, _, share in rows] == [round(100 * expected[n] / len(ok), 1) for n in names]


def test_every_failure_is_listed_with_its_reason(written):
    results, _, page = written
    errors = results[results["status"] == "error"]
    listed = {scan_id: (kind, reason) for scan_id, kind, reason in page.tables["failures"]}
    assert set(listed) == set(errors["scan_id"])
    for scan_id, error in zip(errors["scan_id"], errors["error"]):
        assert f"{listed[scan_id][0]}: {listed[scan_id][1]}" == error
    kinds = errors["error"].str.split(":").str[0].value_counts().to_dict()
    assert {kind: int(n) for kind, n in page.tables["failure-kinds"]} == kinds
    assert "failures-more" not in {attrs.get("id") for _, attrs in page.tags}


def test_sample_is_seeded_and_prefers_different_combinations(written, screened, bundle, case_index, tmp_path):
    results, _, page = written
    ids = page.explained_ids()
    ok = results[results["status"] == "ok"].set_index("scan_id")
    assert len(ids) == 6 and len(set(ids)) == 6 and set(ids) <= set(ok.index)
    assert ok.loc[ids, "combination"].nunique() == 6
    again = write_report(tmp_path, results.sample(frac=1, random_state=3), bundle, case_index, sample=6)
    assert read_page(again)[1].explained_ids() == ids  # the row order does not matter


def test_choose_sample_takes_turns_most_frequent_first():
    ok = pd.DataFrame({"scan_id": [f"s{i}" for i in range(9)],
                       "combination": ["Pl"] * 5 + ["Ca"] * 3 + ["PaPn"]})
    for seed in range(3):
        assert list(choose_sample(ok, 4, seed)["combination"]) == ["Pl", "Ca", "PaPn", "Pl"]
        assert list(choose_sample(ok, 2, seed)["combination"]) == ["Pl", "Ca"]
        assert sorted(choose_sample(ok, 20, seed)["scan_id"]) == sorted(ok["scan_id"])
    tie = pd.DataFrame({"scan_id": ["a", "b"], "combination": ["Pl", "Ca"]})
    assert list(choose_sample(tie, 1, 0)["combination"]) == ["Ca"]  # canonical order breaks a tie
    assert choose_sample(ok, 3, 0).equals(choose_sample(ok, 3, 0)) and choose_sample(ok, 0, 0).empty


def test_strings_from_the_data_are_escaped(screened, bundle, tmp_path):
    _, results = screened
    evil = results[results["scan_id"].str.startswith(EVIL)]  # one ok (so it is in the sample), one failed
    path = write_report(tmp_path, evil, bundle)
    text, page = read_page(path)
    assert EVIL not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "script" not in {tag for tag, _ in page.tags}
    assert EVIL + ".png" in page.explained_ids()
    assert EVIL + " empty.png" in {row[0] for row in page.tables["failures"]}


def test_without_an_index_the_sample_says_how_to_build_one(archive, bundle, tmp_path):
    results = screen_archive(archive, bundle, tmp_path)  # finish_batch without an index
    text, page = read_page(write_report(tmp_path, results, bundle, index=None, sample=2))
    assert len(page.explained_ids()) == 2
    assert all(f"Note: {NO_INDEX_NOTE}." in caption for caption in page.captions[-2:])


def test_unreadable_images_and_a_rebuilt_index_give_notes_not_a_failure(screened, bundle, tmp_path):
    from clare_dist.case_index import CaseIndex

    _, results = screened
    moved = results.assign(path=str(tmp_path / "moved-away.png"))
    other = CaseIndex.build(pd.DataFrame({"case_id": ["new-1"], "path": ["x.png"], "combination": ["Pl"],
                                          "x": [0.5], "y": [0.5], "fold": [0]}))
    _, page = read_page(write_report(tmp_path, moved, bundle, other, sample=2))
    captions = page.captions[-2:]
    assert len(page.explained_ids()) == 2
    assert all("the scan image could not be read again (unreadable)" in caption for caption in captions)
    with_cases = [c for c, i in zip(captions, page.explained_ids())
                  if len(results.set_index("scan_id").loc[i, "similar_cases"])]
    assert with_cases and all("no longer in the case index" in caption for caption in with_cases)


def test_a_run_where_every_scan_failed_still_gets_a_report(archive, bundle, tmp_path):
    results = screen_archive(archive / "broken", bundle, tmp_path)
    assert (results["status"] == "error").all()
    text, page = read_page(write_report(tmp_path, results, bundle))
    assert "counts" not in page.tables and page.explained_ids() == []
    assert [tag for tag, _ in page.tags].count("img") == 1  # the references alone
    assert len(page.tables["failures"]) == 4
    assert "No scan was screened successfully" in text


def test_long_lists_are_capped_and_say_so(screened, bundle, tmp_path, monkeypatch):
    _, results = screened
    monkeypatch.setattr(report, "MAX_FAILURES", 2)
    monkeypatch.setattr(report, "MAX_POINTS", 5)
    text, page = read_page(write_report(tmp_path, results, bundle, sample=0))
    errors = results[results["status"] == "error"].sort_values("scan_id")
    assert [row[0] for row in page.tables["failures"]] == list(errors["scan_id"][:2])
    assert {kind: int(n) for kind, n in page.tables["failure-kinds"]} == \
        errors["error"].str.split(":").str[0].value_counts().to_dict()  # the kinds still count every failure
    assert "3 more failed scans" in text
    assert "A seeded uniform sample of 5 of the 16 screened scans is drawn" in text


def test_the_report_is_replaced_atomically(screened, bundle, tmp_path):
    _, results = screened
    (tmp_path / "report.html").write_text("an old report")
    path = write_report(tmp_path, results.iloc[:3], bundle, sample=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert path.read_text().startswith("<!DOCTYPE html>")
