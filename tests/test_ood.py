"""The "needs human review" flag: the OOD score's statistics and threshold on a toy set (exact), the
threshold fitted on the validation fold only, the graph's second output equal to torch's score,
the outliers it is measured on, and what a run's evaluation reports of it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import LedoitWolf

from clare_dist.export import WithOODScore, export_regressor
from clare_dist.models import ModelConfig, build_model
from clare_dist.ood import FLAG_RATE, fit_statistics, needs_review, review_note
from clare_dist.ood_evaluation import OUTLIERS, TEST, VALIDATION, ood_figures
from clare_dist.ood_fit import features_and_coords, fit_fold_statistics
from clare_dist.runs import (
    OOD_STATISTICS_FILE,
    OUTLIER_PREDICTIONS_FILE,
    PREDICTIONS_FILE,
    VALIDATION_PREDICTIONS_FILE,
    fold_dir,
    load_ood_statistics,
    save_ood_statistics,
)
from clare_dist.runtime import open_session, run_regressor
from clare_dist.scans import ScanConfig, preprocess_scan
from clare_dist.synth.outliers import OUTLIER_KINDS, outliers
from clare_dist.training import fold_data

TOY = np.random.default_rng(7)
TRAIN = TOY.normal(size=(300, 4)) * [1.0, 2.0, 0.5, 1.0] + [1.0, -2.0, 0.0, 3.0]
VALIDATION_FEATURES = TOY.normal(size=(100, 4)) * [1.0, 2.0, 0.5, 1.0] + [1.0, -2.0, 0.0, 3.0]


def test_the_score_is_the_mahalanobis_distance_to_the_training_features_in_units_of_the_threshold():
    statistics = fit_statistics(TRAIN, VALIDATION_FEATURES)
    shrunk = LedoitWolf().fit(TRAIN)
    by_hand = np.array([mahalanobis(f, shrunk.location_, shrunk.precision_) for f in VALIDATION_FEATURES]) / 2  # √D
    np.testing.assert_allclose(statistics.distances(VALIDATION_FEATURES), by_hand, rtol=1e-10)
    # The threshold: the 96th of the 100 validation distances, so 4 of them (≤ 5 %) lie above it.
    assert statistics.threshold == np.sort(statistics.distances(VALIDATION_FEATURES))[95]
    assert statistics.threshold == pytest.approx(np.sort(by_hand)[95], rel=1e-12)
    assert statistics.validation_flagged == 0.04 and needs_review(statistics.scores(VALIDATION_FEATURES)).sum() == 4
    assert (statistics.train_images, statistics.validation_images) == (300, 100)
    far = np.array([[1.0, -2.0, 0.0, 3.0], [30.0, 30.0, 30.0, 30.0]])
    assert needs_review(statistics.scores(far)).tolist() == [False, True]


def test_the_threshold_lets_at_most_the_flag_rate_through_whatever_the_validation_size():
    for n in (1, 7, 19, 20, 21, 100, 333):
        statistics = fit_statistics(TRAIN, TOY.normal(size=(n, 4)))
        assert statistics.validation_flagged <= FLAG_RATE


def test_statistics_are_saved_and_read_back_whole(tmp_path):
    statistics = fit_statistics(TRAIN, VALIDATION_FEATURES)
    read = load_ood_statistics(save_ood_statistics(statistics, tmp_path / OOD_STATISTICS_FILE))
    np.testing.assert_array_equal(read.whitening, statistics.whitening)
    assert (read.threshold, read.validation_flagged) == (statistics.threshold, statistics.validation_flagged)
    assert load_ood_statistics(tmp_path / "none.npz") is None


def test_the_review_note_says_flagged_within_or_not_checked():
    assert review_note(True, 3.25).startswith("Needs human review: the scan lies outside what the model knows (OOD score 3.25 > 1)")
    assert review_note(False, 0.5) == "Within what the model knows (OOD score 0.50 ≤ 1)"
    assert review_note(None, None).startswith("Not checked for out-of-distribution input")


def test_outliers_are_deterministic_images_of_every_kind():
    scans = np.random.default_rng(0).integers(40, 200, size=(3, 32, 32), dtype=np.uint8)
    made = outliers(scans, seed=5)
    assert list(made) == list(OUTLIER_KINDS)
    for kind, images in made.items():
        assert images.shape == scans.shape and images.dtype == np.uint8, kind
        assert images.std(axis=(1, 2)).min() > 0, f"{kind}: a flat image never reaches the model"
        np.testing.assert_array_equal(images, outliers(scans, seed=5)[kind])
    np.testing.assert_array_equal(made["inverted"], 255 - scans)
    assert all(np.array_equal(r, np.rot90(s)) or np.array_equal(r, np.rot90(s, 3)) for r, s in zip(made["rotated_90"], scans))
    assert made["blank"].max() < 20 and made["saturated"].min() > 235


@pytest.fixture(scope="module")
def tiny_fold(tiny_archive):
    table = pd.read_parquet(tiny_archive / "prepared" / "labels.parquet")
    return fold_data(table, tiny_archive / "archive", 0)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="resnet18", head="regression")).eval()


def test_the_threshold_is_fitted_on_the_validation_fold_and_never_on_the_test_fold(tiny_fold, tiny_model):
    fitted = fit_fold_statistics(tiny_model, tiny_fold, 48, 16, seed=0)
    assert (fitted.train_images, fitted.validation_images) == (len(tiny_fold.train), len(tiny_fold.validation))
    # Another test fold (even one made of the validation images) leaves the statistics as they were.
    other_test = type(tiny_fold)(tiny_fold.train, tiny_fold.validation, tiny_fold.validation, tiny_fold.paths)
    again = fit_fold_statistics(tiny_model, other_test, 48, 16, seed=0)
    assert again.threshold == fitted.threshold and np.array_equal(again.mean, fitted.mean)
    # Another validation fold moves the threshold: it is fitted there.
    other_validation = type(tiny_fold)(tiny_fold.train, tiny_fold.test, tiny_fold.test, tiny_fold.paths)
    assert fit_fold_statistics(tiny_model, other_validation, 48, 16, seed=0).threshold != fitted.threshold


def test_the_graphs_second_output_is_torchs_score_of_the_features(tiny_fold, tiny_model, tmp_path):
    scans = np.stack([preprocess_scan(tiny_fold.paths[n], ScanConfig(size=48)) for n in tiny_fold.test["image_index"]])
    statistics = fit_fold_statistics(tiny_model, tiny_fold, 48, 16, seed=0)
    report = export_regressor([tiny_model], tmp_path / "r.onnx", 48, list(scans[:4]), statistics=statistics)
    assert report.ood_max_rel_diff <= 1e-4
    odd = np.concatenate([scans, *outliers(scans[:3]).values()])
    features, coords = features_and_coords(tiny_model, [torch.from_numpy(odd[:, None])])
    with torch.inference_mode():
        graph_coords, graph_scores = WithOODScore([tiny_model], statistics)(torch.from_numpy(odd[:, None]))
    got = run_regressor(open_session(report.path, threads=1), odd)
    np.testing.assert_allclose(graph_scores.numpy(), statistics.scores(features), rtol=1e-4)
    np.testing.assert_allclose(got.ood_scores, statistics.scores(features), rtol=1e-4)
    np.testing.assert_allclose(got.coords, coords, atol=1e-4)
    np.testing.assert_allclose(graph_coords.numpy(), coords, atol=1e-5)
    # Even an untrained network's features tell noise and near-blank films from the archive.
    by_kind = dict(zip(OUTLIER_KINDS, needs_review(got.ood_scores[len(scans):].reshape(len(OUTLIER_KINDS), 3))))
    assert by_kind["noise"].all() and by_kind["blank"].all()


def test_the_evaluation_reports_the_flagged_shares_per_fold_and_says_when_there_are_none(tmp_path):
    run = tmp_path / "run"
    scores = {0: ([0.2, 0.5, 1.5, 0.9], [0.1, 1.2, 0.3, 0.4, 0.5], [2.0, 3.0, 0.5, 9.0]),
              1: ([0.3, 0.7], [0.2, 0.8], [1.1, 1.2, 5.0, 1.3])}
    for fold, (validation, test, odd) in scores.items():
        directory = fold_dir(run, fold)
        directory.mkdir(parents=True)
        pd.DataFrame({"ood_score": validation}).to_parquet(directory / VALIDATION_PREDICTIONS_FILE)
        pd.DataFrame({"ood_score": test}).to_parquet(directory / PREDICTIONS_FILE)
        kinds = ["noise", "noise", "blank", "blank"]
        pd.DataFrame({"image_index": "x", "kind": kinds, "ood_score": odd}).to_parquet(directory / OUTLIER_PREDICTIONS_FILE)
    figures = ood_figures(run, [0, 1])
    assert figures.flagged.loc[0, [VALIDATION, TEST, OUTLIERS, "noise", "blank"]].tolist() == [0.25, 0.2, 0.75, 1.0, 0.5]
    assert figures.flagged.loc[1, [VALIDATION, TEST, OUTLIERS, "noise", "blank"]].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert figures.mean()[TEST] == pytest.approx(0.1) and figures.mean()[OUTLIERS] == pytest.approx(0.875)
    assert not figures.meets_targets and figures.to_json()["folds"]["0"]["scans"][TEST] == 5
    pd.DataFrame({"x": [0.0]}).to_parquet(fold_dir(run, 1) / PREDICTIONS_FILE)  # a fold trained before the OOD score
    assert ood_figures(run, [0, 1]) is None


def _some_scans(tiny_archive, n=4):
    table = pd.read_parquet(tiny_archive / "prepared" / "labels.parquet")
    return [tiny_archive / "archive" / "images" / name for name in table["image_index"].head(n)]


def test_every_result_carries_the_flag_and_a_bundle_without_the_score_says_it_did_not_check(
        tiny_bundle, bundle_without_ood, tiny_archive):
    from clare_dist.bundle import load_bundle
    from clare_dist.encode.api_json import api_answer
    from clare_dist.encode.parquet_row import from_row, to_table
    from clare_dist.encode.text import summary
    from clare_dist.scans import SCAN_ERROR_KINDS
    from clare_dist.screening import Screener

    files = _some_scans(tiny_archive)
    checked = load_bundle(tiny_bundle)
    assert checked.has_ood_score and checked.manifest["ood"]["name"] == "ood_score"
    screened = Screener(checked, threads=1).screen(files)
    assert all(isinstance(s.ood_score, float) and s.needs_review == (s.ood_score > 1) for s in screened)
    unchecked = Screener(load_bundle(bundle_without_ood), threads=1).screen(files)
    assert not load_bundle(bundle_without_ood).has_ood_score
    assert all(s.ood_score is None and s.needs_review is None and not s.ood_checked for s in unchecked)
    assert [(s.x, s.y) for s in unchecked] == [(s.x, s.y) for s in screened]  # the same regressor
    flagged = replace(screened[0], ood_score=4.5, needs_review=True)
    for screening in (screened[0], unchecked[0], flagged):
        answer = api_answer(screening, "r")
        assert (answer["needs_review"], answer["ood_score"]) == (screening.needs_review, screening.ood_score)
        read = from_row(to_table([screening], ["p"]).to_pandas().iloc[0], SCAN_ERROR_KINDS)
        assert (read.needs_review, read.ood_score) == (screening.needs_review, screening.ood_score)
    assert "Not checked for out-of-distribution input" in summary(unchecked[0])
    assert summary(flagged).splitlines()[1].startswith("  ** Needs human review: the scan lies outside what the model knows")


def test_the_manifest_and_the_graph_must_agree_on_the_ood_score(tiny_bundle, bundle_without_ood, tmp_path):
    import json
    import shutil

    from clare_dist.bundle import MANIFEST_FILE, BundleError, load_bundle

    without_entry, with_entry = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_bundle, without_entry)
    shutil.copytree(bundle_without_ood, with_entry)
    manifest = json.loads((without_entry / MANIFEST_FILE).read_text())
    ood = manifest.pop("ood")
    (without_entry / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="has an output 'ood_score' that the manifest does not describe"):
        load_bundle(without_entry)
    manifest = json.loads((with_entry / MANIFEST_FILE).read_text())
    (with_entry / MANIFEST_FILE).write_text(json.dumps(manifest | {"ood": ood}))
    with pytest.raises(BundleError, match="describes an OOD score but regressor.onnx has no output 'ood_score'"):
        load_bundle(with_entry)


def test_the_explanation_picture_says_a_flagged_scan_needs_human_review():
    from clare_dist.explanation import explanation
    from clare_dist.plots import explanation_figure
    from clare_dist.result import Screening
    from layouts import GOOD

    top3 = ["Pl", "CaPl", "CaPnPl"]
    within = Screening(scan_id="a.png", model_version="m", x=0.7, y=0.9, top3=top3, top3_distances=[0.01, 0.1, 0.2],
                       combination="Pl", Ca=0, Pa=0, Pn=0, Pl=1, Ot=0, explanation=explanation(top3, "Pl"),
                       ood_score=0.5, needs_review=False)
    flagged = replace(within, ood_score=6.0, needs_review=True)

    def texts(screening):
        fig = explanation_figure(screening, GOOD, [], "research only")
        return [fig._suptitle.get_text()] + [t.get_text() for t in fig.texts]

    assert not any("needs human review" in t for t in texts(within))
    assert texts(flagged)[0] == "a.png: Pl   (needs human review)"
    assert any(t.startswith("Needs human review: the scan lies outside what the model knows (OOD score 6.00") for t in texts(flagged))
