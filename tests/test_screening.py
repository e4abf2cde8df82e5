"""Screening: one scan or many gives what the stages give by hand, bad scans are set aside, and
similar cases are the paper's lookup (the k nearest known cases of the decision's combination)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SAMPLE_IMAGES, sample_scans

from clare_dist.bundle import Bundle, load_bundle, write_bundle
from clare_dist.explanation import explanation
from clare_dist.export import export_regressor
from clare_dist.labels import CLASSES, COMBINATIONS, combination_vector
from clare_dist.models import ModelConfig, build_model
from clare_dist.rules import References, apply_rules
from clare_dist.runtime import open_session, run_regressor
from clare_dist.scans import ScanConfig, ScanError, preprocess_scan
from clare_dist.result import Screening
from clare_dist.screening import NO_INDEX_NOTE, Screener, figure_paths, similar

SIZE = 48

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scan_files() -> list[Path]:
    return sample_scans(6)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, scan_files) -> Bundle:
    """A ResNet18 regressor at 48 px (random weights, seed 0) with a 6×5 grid of references.

    With seed 0 the sample scans land around (0.1–0.3, 0.1–0.25), among several references, so
    the scans do not all get the same decision.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", head="regression")).eval()
    work = tmp_path_factory.mktemp("screening")
    checks = [preprocess_scan(f, ScanConfig(size=SIZE)) for f in scan_files[:3]]
    export_regressor([model], work / "regressor.onnx", SIZE, checks)
    torch.set_num_threads(previous)
    grid = {name: (i % 6 / 5, i // 6 / 4) for i, name in enumerate(COMBINATIONS)}
    references = References.from_mapping(grid)
    document = {"format_version": 1, "order": list(COMBINATIONS), "references": references.to_mapping()}
    (work / "references.json").write_text(json.dumps(document, indent=2) + "\n")
    return write_bundle(work / "bundle", work / "regressor.onnx", work / "references.json", backbone="resnet18",
                        image_size=SIZE, folds=[0], ensemble=False, metrics={})


@pytest.fixture(scope="module")
def screener(bundle) -> Screener:
    return Screener(bundle, threads=1)


def cases_table(points: dict[str, np.ndarray], paths: dict[str, str] | None = None) -> pd.DataFrame:
    """Known cases with the given coordinates per combination; ids say which combination."""
    rows = []
    for combination, xy in points.items():
        for i, (x, y) in enumerate(xy):
            case_id = f"{combination}-{i:03d}"
            path = (paths or {}).get(case_id, f"cases/{case_id}.png")
            rows.append({"case_id": case_id, "path": path, "combination": combination, "x": x, "y": y, "fold": i % 5})
    return pd.DataFrame(rows)


def brute_force(table: pd.DataFrame, point: tuple[float, float], combination: str, k: int) -> tuple[list, np.ndarray]:
    """Case ids and distances of the k nearest cases of `combination`, by numpy."""
    own = table[table["combination"] == combination]
    xy = own[["x", "y"]].to_numpy(np.float32).astype(np.float64)
    distances = np.sqrt(((xy - np.asarray(point)) ** 2).sum(axis=1))
    order = np.argsort(distances, kind="stable")[:k]
    return own["case_id"].to_numpy()[order].tolist(), distances[order]


def test_one_scan_equals_the_stages_composed_by_hand(screener, bundle, scan_files):
    (got,) = screener.screen([scan_files[0]])
    scan = preprocess_scan(scan_files[0], ScanConfig(size=SIZE))
    coords = run_regressor(open_session(bundle.onnx_path, threads=1), scan[None]).coords
    rules = apply_rules(coords, bundle.references)
    decision = rules.r4[0]
    assert isinstance(got, Screening)
    assert got.scan_id == scan_files[0].name
    assert (got.x, got.y) == (float(coords[0, 0]), float(coords[0, 1]))
    assert got.top3 == list(rules.top3[0]) and got.top3_distances == rules.distances[0].tolist()
    assert got.combination == decision
    assert [getattr(got, code) for code in CLASSES] == combination_vector(decision).tolist()
    assert got.explanation == explanation(list(rules.top3[0]), decision)
    assert got.model_version == bundle.model_version
    assert got.similar_cases == [] and got.similar_note == NO_INDEX_NOTE  # this bundle has no index
    assert json.loads(json.dumps(got.to_dict())) == got.to_dict()
    assert Screening.from_dict(json.loads(json.dumps(got.to_dict()))) == got


def test_a_batch_equals_one_scan_at_a_time(screener, scan_files):
    batch = screener.screen(scan_files)
    singles = [screener.screen([f])[0] for f in scan_files]
    assert [s.scan_id for s in batch] == [f.name for f in scan_files]
    assert len({s.combination for s in batch}) > 1, "the fixture should give the scans different decisions"
    for one, alone in zip(batch, singles):
        np.testing.assert_allclose([one.x, one.y], [alone.x, alone.y], rtol=0, atol=1e-5)
        assert (one.top3, one.combination, one.explanation) == (alone.top3, alone.combination, alone.explanation)


def test_a_bad_scan_is_set_aside_and_the_others_are_screened(screener, scan_files, tmp_path):
    empty, text = tmp_path / "empty.png", tmp_path / "notes.png"
    empty.write_bytes(b"")
    text.write_text("not a scan\n")
    sources = [scan_files[0], empty, scan_files[1], text]
    results = screener.screen_many(sources, scan_ids=["a", "b", "c", "d"])
    assert [r.status for r in results] == ["ok", "error", "ok", "error"]
    assert (results[1].scan_id, results[1].error_kind) == ("b", "empty")
    assert (results[3].scan_id, results[3].error_kind) == ("d", "not_an_image")
    assert "not a PNG, JPEG or DICOM" in results[3].error_reason
    assert results[1].combination is None and results[1].top3 == []
    good = screener.screen([scan_files[0], scan_files[1]], scan_ids=["a", "c"])
    assert [results[0], results[2]] == good
    with pytest.raises(ScanError) as err:
        screener.screen(sources)
    assert err.value.kind == "empty"


def test_similar_cases_are_the_k_nearest_of_the_decision(bundle, screener, scan_files):
    from clare_dist.case_index import CaseIndex

    plain = screener.screen(scan_files)
    rng = np.random.default_rng(0)
    decisions = sorted({s.combination for s in plain})
    points = {name: rng.uniform(0.0, 0.5, (40, 2)) for name in decisions}
    points["CaPnPl"] = rng.uniform(0.0, 0.5, (40, 2))  # cases of a combination none of the scans get
    table = cases_table(points)
    indexed = Screener(bundle, CaseIndex.build(table), threads=1)
    for k in (1, 9):
        for got in indexed.screen(scan_files, k=k):
            ids, distances = brute_force(table, (got.x, got.y), got.combination, k)
            assert [c.case_id for c in got.similar_cases] == ids
            np.testing.assert_allclose([c.distance for c in got.similar_cases], distances, rtol=1e-5, atol=1e-6)
            assert {c.combination for c in got.similar_cases} == {got.combination}
            assert got.similar_note is None


def test_fewer_known_cases_than_k_are_all_shown_with_a_note(bundle, screener, scan_files):
    from clare_dist.case_index import CaseIndex

    (plain,) = screener.screen(scan_files[:1])
    table = cases_table({plain.combination: np.array([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]])})
    index = CaseIndex.build(table)
    (got,) = Screener(bundle, index, threads=1).screen(scan_files[:1], k=9)
    assert sorted(c.case_id for c in got.similar_cases) == sorted(table["case_id"])
    assert got.similar_note == index.nearest([got.x, got.y], combination=got.combination, k=9).note
    assert got.similar_note is not None and "only 3" in got.similar_note


def test_a_decision_no_known_case_can_have_gets_a_note():
    from clare_dist.case_index import CaseIndex

    index = CaseIndex.build(cases_table({"Ca": np.array([[0.1, 0.1]])}))
    found = similar(index, np.array([[0.1, 0.1], [0.2, 0.2]]), ["CaPaPnPl", "Pl"], k=9)
    assert found.cases == [[], []]
    assert "CaPaPnPl" in found.notes[0] and "at most 3" in found.notes[0]
    assert found.notes[1] == index.nearest([0.2, 0.2], combination="Pl").note


def test_figure_paths():
    assert figure_paths("out/fig.png", ["a.png"]) == [Path("out/fig.png")]
    assert figure_paths("fig.png", ["a.png", "b.dcm"]) == [Path("fig-a.png"), Path("fig-b.png")]
    assert figure_paths("fig.png", ["a.png", "a.png"]) == [Path("fig-1-a.png"), Path("fig-2-a.png")]


@pytest.fixture(scope="module")
def indexed_bundle(bundle, screener, scan_files, tmp_path_factory) -> Path:
    """The bundle with an index whose cases are the sample scans, one of them moved away."""
    from clare_dist.case_index import CaseIndex, write_index_into_bundle

    (first,) = screener.screen(scan_files[:1])
    path = tmp_path_factory.mktemp("indexed") / "bundle"
    shutil.copytree(bundle.path, path)
    others = sorted(SAMPLE_IMAGES.glob("*.png"))[10:18]
    offsets = np.linspace(0.01, 0.08, len(others) + 1)[:, None] * np.array([[1.0, 0.5]])
    xy = np.array([first.x, first.y]) + offsets
    paths = {f"{first.combination}-{i:03d}": f.name for i, f in enumerate(others)}
    paths[f"{first.combination}-{len(others):03d}"] = "moved/away.png"
    write_index_into_bundle(path, CaseIndex.build(cases_table({first.combination: xy}, paths)))
    return path


def test_predict_prints_decision_sentence_and_similar_cases(indexed_bundle, scan_files, capsys):
    from clare_dist.cli import main

    assert main(["predict", str(scan_files[0]), "--bundle", str(indexed_bundle), "--k", "4"]) == 0
    out = capsys.readouterr().out
    (expected,) = Screener(load_bundle(indexed_bundle), threads=1).screen(scan_files[:1], k=4)
    assert out.startswith(f"{scan_files[0].name}: {expected.combination}\n")
    assert expected.explanation in out and expected.model_version in out
    for case in expected.similar_cases:
        assert f"{case.case_id}  {case.combination}  {case.distance:.4f}" in out
    assert len(expected.similar_cases) == 4


def test_predict_json_lines(indexed_bundle, scan_files, capsys):
    from clare_dist.cli import main

    assert main(["predict", *map(str, scan_files), "--bundle", str(indexed_bundle), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["scan_id"] for r in records] == [f.name for f in scan_files]
    assert {r["model_version"] for r in records} == {load_bundle(indexed_bundle).model_version}
    indexed = records[0]["combination"]  # the index holds 9 cases of the first scan's decision only
    for record in records:
        if record["combination"] == indexed:
            assert len(record["similar_cases"]) == 9 and record["similar_note"] is None
        else:
            assert record["similar_cases"] == [] and record["similar_note"].startswith("no known cases")


def test_predict_plot(indexed_bundle, scan_files, tmp_path, capsys):
    from clare_dist.cli import main

    out = tmp_path / "explained.png"
    code = main(["predict", str(scan_files[0]), "--bundle", str(indexed_bundle), "--plot", str(out),
                 "--images", str(SAMPLE_IMAGES)])
    assert code == 0
    assert out.stat().st_size > 10_000


def test_predict_goes_on_after_a_broken_scan_and_exits_1(bundle, scan_files, tmp_path, capsys):
    from clare_dist.cli import main

    broken = tmp_path / "broken.png"
    broken.write_bytes(scan_files[0].read_bytes()[:200])
    plot = tmp_path / "fig.png"
    code = main(["predict", str(scan_files[0]), str(broken), str(scan_files[1]), "--bundle", str(bundle.path),
                 "--plot", str(plot)])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.png: truncated:" in captured.err
    assert captured.out.count(bundle.model_version) == 2
    assert sorted(p.name for p in tmp_path.glob("fig-*.png")) == sorted(f"fig-{f.stem}.png" for f in scan_files[:2])
