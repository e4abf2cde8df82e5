"""The case index: exact against numpy brute force for any tree shape, persisted, read from format 1, and bundled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper

from clare_dist.bundle import Bundle, load_bundle, write_bundle
from clare_dist.case_index import (
    ALL_CASES,
    CaseIndex,
    CaseIndexError,
    UnknownCaseError,
    build_case_index,
    write_index_into_bundle,
)
from clare_dist.labels import COMBINATION_INDEX, COMBINATIONS, LabelError
from clare_dist.rules import References

RARE = "CaPnPl"  # given 3 cases below
ABSENT = "CaPnOt"  # given none


def table(xy: np.ndarray, combinations: np.ndarray) -> pd.DataFrame:
    n = len(xy)
    return pd.DataFrame({
        "case_id": [f"{i:08d}_000.png" for i in range(n)],
        "path": [f"images_{i % 3:03d}/images/{i:08d}_000.png" for i in range(n)],
        "combination": combinations,
        "x": xy[:, 0],
        "y": xy[:, 1],
        "fold": np.arange(n) % 6 - 1,
    })


def clustered(n: int, seed: int) -> pd.DataFrame:
    """Like real predictions: around 26 references, some confusion, background and far outliers."""
    rng = np.random.default_rng(seed)
    references = rng.random((len(COMBINATIONS), 2))
    truth = rng.choice([c for c in range(len(COMBINATIONS)) if COMBINATIONS[c] not in (RARE, ABSENT)], n)
    near = np.where(rng.random(n) < 0.8, truth, rng.integers(0, len(COMBINATIONS), n))
    xy = references[near] + rng.normal(0, 0.03, (n, 2))
    xy[: n // 20] = rng.uniform(-0.2, 1.2, (n // 20, 2))  # background
    xy[n // 20 : n // 20 + 5] = rng.uniform(-1e4, 1e4, (5, 2))  # far outside [0, 1]
    xy[100:160] = xy[200:260]  # exact duplicates
    names = np.array(COMBINATIONS, dtype=object)[truth]
    names[-3:] = RARE
    return table(xy, names)


def lattice(n: int, seed: int) -> pd.DataFrame:
    """Integer points with many duplicates: distances tie exactly, so insertion order decides."""
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 12, (n, 2)).astype(float)
    return table(xy, rng.choice(["Pa", "Pl", "No Finding"], n))


def queries(seed: int, n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([
        rng.uniform(-0.1, 1.1, (n, 2)),
        rng.integers(-1, 13, (n // 4, 2)) / 2,  # on and between lattice points
        [[50.0, 50.0], [-3e4, 2.0], [0.5, 1e5]],  # far outside the data
    ])


def brute_force(cases: pd.DataFrame, q: np.ndarray, combination: str | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Case ids and distances by numpy: float64 distances of the float32 coordinates, ties by row."""
    if combination is not None:
        cases = cases[cases["combination"] == combination]
    points = cases[["x", "y"]].to_numpy(np.float32).astype(np.float64)
    q = q.astype(np.float32).astype(np.float64)
    dx, dy = points[None, :, 0] - q[:, None, 0], points[None, :, 1] - q[:, None, 1]
    d2 = dx * dx + dy * dy
    rows = np.broadcast_to(np.arange(len(points)), d2.shape)
    order = np.lexsort((rows, d2), axis=-1)[:, :k]
    ids = cases["case_id"].to_numpy(dtype=object)[order]
    return ids, np.sqrt(np.take_along_axis(d2, order, axis=1)).astype(np.float32)


def assert_exact(index: CaseIndex, cases: pd.DataFrame, q: np.ndarray, combination: str | None, k: int) -> None:
    found = index.nearest(q, combination, k)
    ids, distances = brute_force(cases, q, combination, k)
    np.testing.assert_array_equal(found.case_ids, ids)
    np.testing.assert_array_equal(found.distances, distances)
    for i in range(0, len(q), 7):  # a lone query takes its own path
        alone = index.nearest(q[i], combination, k)
        np.testing.assert_array_equal(alone.case_ids, ids[i : i + 1])
        np.testing.assert_array_equal(alone.distances, distances[i : i + 1])
    expected = cases if combination is None else cases[cases["combination"] == combination]
    np.testing.assert_array_equal(found.combinations, expected.set_index("case_id").loc[ids.ravel(), "combination"].to_numpy(object).reshape(ids.shape))


TREES = {"flat": 10**9, "deep": 1, "default": 16}  # leaf sizes: one leaf (brute force), a point a leaf, the default


def build(cases: pd.DataFrame, path: str) -> CaseIndex:
    return CaseIndex.build(cases, leaf_size=TREES[path])


@pytest.fixture(scope="module")
def cases() -> pd.DataFrame:
    return clustered(4000, seed=1)


@pytest.fixture(scope="module", params=list(TREES))
def index(request, cases) -> CaseIndex:
    built = build(cases, request.param)
    assert all(p.tree.leafsize == TREES[request.param] for p in built._partitions.values())
    return built


@pytest.mark.parametrize("k", [1, 9, 40])
def test_all_cases_lookup_equals_brute_force(index, cases, k):
    assert_exact(index, cases, queries(2), None, k)


@pytest.mark.parametrize("combination", ["No Finding", "Pa", "CaPl", RARE])
def test_per_combination_lookup_equals_brute_force(index, cases, combination):
    assert_exact(index, cases, queries(3), combination, 9)


@pytest.mark.parametrize("path", list(TREES))
def test_ties_and_duplicates_go_by_insertion_order(path):
    cases = lattice(3000, seed=4)
    index = build(cases, path)
    q = queries(5)
    for combination in (None, "Pa"):
        for k in (9, 60):  # 60 > the copies of one lattice point: the tie spans the k-th place
            assert_exact(index, cases, q, combination, k)
    again = index.nearest(q, None, 9)
    np.testing.assert_array_equal(again.case_ids, index.nearest(q, None, 9).case_ids)


@pytest.mark.parametrize("path", ["deep", "default"])
def test_queries_far_from_every_case_equal_brute_force(path, cases):
    """Far outside the data in every direction and at every scale (a corrupted scan's coordinates)."""
    rng = np.random.default_rng(13)
    far = rng.normal(size=(120, 2)) * np.repeat(10.0 ** np.arange(1, 7), 20)[:, None]
    index = build(cases, path)
    for combination in (None, "Pa", RARE):
        assert_exact(index, cases, far, combination, 9)


@pytest.mark.parametrize("seed", [6, 7])
def test_uniform_data_on_the_grid(seed):
    rng = np.random.default_rng(seed)
    cases = table(rng.random((3000, 2)), rng.choice(["Pa", "Pl"], 3000))
    index = build(cases, "deep")
    assert_exact(index, cases, rng.random((300, 2)), None, 9)
    assert_exact(index, cases, rng.random((300, 2)), "Pl", 9)


@pytest.mark.parametrize("path", list(TREES))
@pytest.mark.parametrize("offset", [0.5, 1000.0])
def test_dense_single_queries_stay_exact(path, offset):
    """As dense as a cluster of a 10M-case index, where neighbours differ in the last bits of float32."""
    rng = np.random.default_rng(12)
    cases = table(offset + rng.random((20_000, 2)) * 0.01, rng.choice(["Pa", "Pl"], 20_000))
    index = build(cases, path)
    for point in offset + rng.random((10, 2)) * 0.01:
        assert_exact(index, cases, point[None, :], None, 9)


def test_one_point_batches_and_per_combination_agree(index):
    q = queries(8, n=40)
    batch = index.nearest(q, "Pa", 9)
    assert batch.case_ids.shape == (len(q), 9) and batch.complete and batch.note is None
    for i in (0, 17, len(q) - 1):
        single = index.nearest(q[i], "Pa", 9)
        np.testing.assert_array_equal(single.case_ids, batch.case_ids[i : i + 1])
        np.testing.assert_array_equal(single.distances, batch.distances[i : i + 1])

    names = np.array(["Pa", RARE, ABSENT, "Pl"] * 10, dtype=object)
    per_query = index.nearest_per_combination(q[: len(names)], names, k=9)
    assert len(per_query) == len(names)
    for i, name in enumerate(names):
        alone = index.nearest(q[i], name, 9)
        np.testing.assert_array_equal(per_query[i].case_ids, alone.case_ids)
        np.testing.assert_array_equal(per_query[i].distances, alone.distances)
        assert per_query[i].note == alone.note and per_query[i].available == alone.available

    four = index.nearest_per_combination(q[:2], ["CaPaPnPl", "Pa"], k=9)
    assert four[0].case_ids.shape == (1, 0) and four[0].available == 0 and not four[0].complete
    assert four[0].note == "no known case has CaPaPnPl: labelled images have at most 3 findings, so at most 3 classes"
    np.testing.assert_array_equal(four[1].case_ids, index.nearest(q[1], "Pa", 9).case_ids)


def test_fewer_than_k_cases_are_all_returned_and_said(index, cases):
    found = index.nearest([0.5, 0.5], RARE, k=9)
    assert found.case_ids.shape == (1, 3) and found.available == 3 and not found.complete
    assert found.note == f"only 3 known cases have {RARE}; showing all 3"
    assert set(found.case_ids[0]) == set(cases["case_id"][cases["combination"] == RARE])
    assert list(found.distances[0]) == sorted(found.distances[0])


def test_a_combination_without_cases_gives_an_empty_answer(index):
    found = index.nearest(np.zeros((4, 2)), ABSENT, k=9)
    assert found.case_ids.shape == found.distances.shape == (4, 0)
    assert found.available == 0 and not found.complete
    assert found.note == f"no known cases have {ABSENT}; there are no similar cases to show"


def test_bad_queries_are_refused(index):
    with pytest.raises(LabelError, match="not a combination name"):
        index.nearest([0.5, 0.5], "CaXx")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.nearest([0.5, 0.5], k=0)
    with pytest.raises(ValueError, match=r"one point \(2,\) or N points"):
        index.nearest([0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        index.nearest([np.nan, 0.5])
    with pytest.raises(ValueError, match="one combination per point"):
        index.nearest_per_combination(np.zeros((3, 2)), ["Pa", "Pl"])
    with pytest.raises(LabelError, match="not a combination name"):
        index.nearest_per_combination(np.zeros((1, 2)), ["CaXx"])


def test_counts_and_case_lookup(index, cases):
    assert len(index) == len(cases)
    counts = cases["combination"].value_counts()
    assert index.combinations == {name: int(counts[name]) for name in COMBINATIONS if name in counts}
    assert list(index.combinations) == [name for name in COMBINATIONS if name in counts]  # canonical order
    row = cases.iloc[1234]
    assert index.case(row["case_id"]) == {
        "path": row["path"], "combination": row["combination"],
        "x": float(np.float32(row["x"])), "y": float(np.float32(row["y"])), "fold": int(row["fold"]),
    }
    with pytest.raises(UnknownCaseError, match="no known case has the id 'nope.png'") as caught:
        index.case("nope.png")
    assert isinstance(caught.value, KeyError)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns="fold"), r"lacks the columns \['fold'\]"),
        (lambda t: t.assign(combination="Zz"), r"unknown combinations \['Zz'\]"),
        (lambda t: t.assign(case_id="same.png"), "case ids occur more than once"),
        (lambda t: t.assign(x=np.inf), "not finite"),
        (lambda t: t.assign(path=None), r"missing values in \['path'\]"),
        (lambda t: t.assign(fold=0.5), "fold column must hold integers"),
    ],
)
def test_bad_case_tables_are_refused(change, message):
    with pytest.raises(CaseIndexError, match=message):
        CaseIndex.build(change(lattice(20, seed=9)))


def test_save_and_load_round_trip(tmp_path, index, cases):
    index.save(tmp_path / "index")
    files = {p.name for p in (tmp_path / "index").iterdir()}
    assert {"cases.parquet", "index.json", f"{ALL_CASES}.npy"} <= files and len(files) == 2 + 1 + len(index.combinations)
    assert json.loads((tmp_path / "index" / "index.json").read_text())["format_version"] == 2
    loaded = CaseIndex.load(tmp_path / "index")
    assert len(loaded) == len(index) and loaded.combinations == index.combinations
    q = queries(10, n=60)
    for combination in (None, "Pa", RARE):
        before, after = index.nearest(q, combination, 9), loaded.nearest(q, combination, 9)
        np.testing.assert_array_equal(after.case_ids, before.case_ids)
        np.testing.assert_array_equal(after.distances, before.distances)
    assert loaded.case(cases["case_id"][7]) == index.case(cases["case_id"][7])
    assert_exact(loaded, cases, q, "Pl", 9)


def test_load_names_missing_and_inconsistent_files(tmp_path, cases):
    saved = build(cases, "default").save(tmp_path / "index")
    with pytest.raises(CaseIndexError, match="index.json is missing"):
        CaseIndex.load(tmp_path / "nowhere")

    pd.read_parquet(saved / "cases.parquet").iloc[:-1].to_parquet(saved / "cases.parquet")
    with pytest.raises(CaseIndexError, match=f"says {len(cases)} cases but cases.parquet has {len(cases) - 1} rows"):
        CaseIndex.load(saved)

    saved = build(cases, "default").save(tmp_path / "again")
    (saved / "c01.npy").unlink()  # Ca
    (saved / "c02.npy").write_bytes(b"not an index")  # Pa
    pl = saved / f"c{COMBINATION_INDEX['Pl']:02d}.npy"
    order = np.load(pl)
    np.save(pl, np.r_[order[1:], order[1]])  # one case twice, one never
    with pytest.raises(CaseIndexError, match=r"c01.npy \(partition Ca\) is missing") as caught:
        CaseIndex.load(saved)
    assert "c02.npy (partition Pa) cannot be read" in str(caught.value)  # every problem, at once
    assert f"{pl.name} is not an order of the {len(order)} cases of partition Pl" in str(caught.value)
    assert "Rebuild it from the labelled archive" in str(caught.value)

    meta = json.loads((saved / "index.json").read_text())
    meta["format_version"] = 99
    (saved / "index.json").write_text(json.dumps(meta))
    with pytest.raises(CaseIndexError, match="format_version 99; this clare-dist reads 1 and 2"):
        CaseIndex.load(saved)


def test_an_index_of_format_1_is_read_from_its_case_table(tmp_path, cases):
    """The FAISS lattice's index.json and cases.parquet (its .faiss files are not read): same answers."""
    old = tmp_path / "v1"
    old.mkdir()
    cases.to_parquet(old / "cases.parquet", index=False)
    counts = {ALL_CASES: len(cases), **cases["combination"].value_counts().to_dict()}
    (old / "index.json").write_text(json.dumps({
        "format_version": 1, "faiss_version": "1.15.1", "cases": len(cases),
        "partitions": [{"combination": name, "cases": int(n), "file": f"{name}.faiss",
                        "grid": {"x0": 0.0, "y0": 0.0, "h": 1.0, "nx": 1, "ny": 1}} for name, n in counts.items()],
    }))
    loaded = CaseIndex.load(old)
    for combination in (None, "Pa", RARE):
        assert_exact(loaded, cases, queries(14, n=60), combination, 9)
    meta = json.loads((old / "index.json").read_text())
    meta["cases"] = 5
    (old / "index.json").write_text(json.dumps(meta))
    with pytest.raises(CaseIndexError, match="says 5 cases but cases.parquet has"):
        CaseIndex.load(old)


SIZE = 8


def tiny_regressor(path: Path) -> Path:
    """An ONNX graph with the bundle's input and output contract (uint8 scan → 2 coords)."""
    weights = helper.make_tensor("w", TensorProto.FLOAT, [SIZE * SIZE, 2], np.zeros(SIZE * SIZE * 2))
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["scan"], ["scan_f"], to=TensorProto.FLOAT),
            helper.make_node("Flatten", ["scan_f"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["coords"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("scan", TensorProto.UINT8, [None, 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("coords", TensorProto.FLOAT, [None, 2])],
        [weights],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def tiny_bundle(tmp_path: Path) -> Bundle:
    """A valid bundle of `tiny_regressor`, without a case index."""
    references = References.from_mapping({name: (i % 6 / 5, i // 6 / 4) for i, name in enumerate(COMBINATIONS)})
    (tmp_path / "references.json").write_text(
        json.dumps({"format_version": 1, "order": list(COMBINATIONS), "references": references.to_mapping()})
    )
    bundle = write_bundle(
        tmp_path / "bundle", tiny_regressor(tmp_path / "r.onnx"), tmp_path / "references.json",
        backbone="resnet18", image_size=SIZE, folds=[0], ensemble=False, metrics={},
    )
    assert not bundle.has_index
    return bundle


def test_index_written_into_a_bundle(tmp_path, cases):
    bundle = tiny_bundle(tmp_path)
    index = build(cases, "default")

    for _ in range(2):  # writing again replaces the index
        assert write_index_into_bundle(bundle.path, index) == bundle.index_dir == bundle.path / "index"
    reloaded = load_bundle(bundle.path)
    assert reloaded.model_version == bundle.model_version and reloaded.has_index
    entry = reloaded.manifest["index"]
    assert entry["cases"] == len(cases) and entry["combinations"] == index.combinations
    assert entry["format_version"] == 2 and entry["directory"] == "index" and entry["built_at"]
    assert {k: v for k, v in reloaded.manifest.items() if k != "index"} == bundle.manifest
    assert sorted(p.name for p in bundle.path.iterdir()) == ["index", "manifest.json", "references.json", "regressor.onnx"]
    q = queries(11, n=30)
    np.testing.assert_array_equal(
        CaseIndex.load(reloaded.index_dir).nearest(q, "Pa").case_ids, index.nearest(q, "Pa").case_ids
    )


def test_a_screened_labelled_archive_becomes_the_bundles_index(tmp_path):
    """`embed --build-index`: each ok result row joined to its label by file name; failed or unlabelled
    scans are left out, and the case path is where the scan was screened."""
    bundle = tiny_bundle(tmp_path)
    results = pd.DataFrame({
        "scan_id": ["images_001/images/a.png", "images_001/images/b.png", "images_002/images/c.png", "d.png"],
        "path": ["/archive/images_001/images/a.png", "/archive/images_001/images/b.png",
                 "/archive/images_002/images/c.png", "/archive/d.png"],
        "status": ["ok", "error", "ok", "ok"],
        "x": [0.1, np.nan, 0.3, 0.4], "y": [0.5, np.nan, 0.7, 0.8],
        "combination": ["Pl", None, "Pa", "Pa"],  # the predicted one: not what the index is partitioned by
    })
    labels = pd.DataFrame({"image_index": ["a.png", "b.png", "c.png"], "combination": ["Pa", "Pl", "No Finding"],
                           "fold": [0, 1, 2]})
    assert build_case_index(bundle.path, results, labels) == 2
    reloaded = load_bundle(bundle.path)
    assert reloaded.manifest["index"]["combinations"] == {"No Finding": 1, "Pa": 1}
    index = CaseIndex.load(reloaded.index_dir)
    assert index.case("a.png") == {"path": "/archive/images_001/images/a.png", "combination": "Pa", "x": pytest.approx(0.1),
                                   "y": pytest.approx(0.5), "fold": 0}
    assert index.nearest([0.3, 0.7], "No Finding", k=1).case_ids[0].tolist() == ["c.png"]
    with pytest.raises(ValueError, match="no screened scan matches an image_index"):
        build_case_index(bundle.path, results, labels.assign(image_index=["x.png", "y.png", "z.png"]))
