"""The reading order: the triage score from the reference space, and the worklist built on it."""

import numpy as np
import pandas as pd
import pytest

from clare_dist.labels import COMBINATIONS, NO_FINDING
from clare_dist.rules import References
from clare_dist.triage import WORKLIST_COLUMNS, triage_scores, worklist

# No Finding at the origin, the others on the x axis at 1, 2, ... 25.
assert COMBINATIONS[0] == NO_FINDING
REFS = References.from_mapping({name: [float(i), 0.0] for i, name in enumerate(COMBINATIONS)})


def test_the_score_is_the_share_of_the_way_to_the_nearest_abnormal_reference():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0], [0.25, 0.0], [-1.0, 0.0], [5.0, 0.0]])
    np.testing.assert_allclose(triage_scores(points, REFS), [0.0, 1.0, 0.5, 0.25, 1 / 3, 1.0])


def test_a_point_on_both_references_at_once_is_undecided():
    both = References.from_mapping({name: [0.0, 0.0] if name in (NO_FINDING, "Ca") else [3.0, i] for i, name in enumerate(COMBINATIONS)})
    assert triage_scores(np.zeros((1, 2)), both).tolist() == [0.5]


def test_the_worklist_puts_likely_abnormal_first_and_failed_scans_last_with_their_reason():
    results = pd.DataFrame({
        "scan_id": ["a.png", "b.png", "broken.png", "c.png"],
        "status": ["ok", "ok", "error", "ok"],
        "error": [None, None, "truncated: the PNG is cut short", None],
        "x": [0.1, 0.9, np.nan, 0.5], "y": [0.0, 0.0, np.nan, 0.0],
        "combination": [NO_FINDING, "Ca", None, "Ca"],
        "explanation": ["no finding", "cardiac", None, "cardiac"],
    })
    order = worklist(results, REFS)
    assert list(order.columns) == list(WORKLIST_COLUMNS)
    assert order["scan_id"].tolist() == ["b.png", "c.png", "a.png", "broken.png"]
    assert order["rank"].tolist() == [1, 2, 3, 4]
    assert order["triage_score"].iloc[:3].tolist() == pytest.approx([0.9, 0.5, 0.1])
    failed = order.iloc[3]
    assert np.isnan(failed["triage_score"]) and failed["why"] == "not screened (truncated): the PNG is cut short"
    assert order.iloc[0]["decision"] == "Ca" and order.iloc[0]["why"] == "cardiac"


def test_scans_flagged_for_review_come_apart_after_the_ranked_ones_most_unusual_first():
    results = pd.DataFrame({
        "scan_id": ["a.png", "odd.png", "broken.png", "c.png", "odder.png"],
        "status": ["ok", "ok", "error", "ok", "ok"],
        "error": [None, None, "empty: the file is empty", None, None],
        "x": [0.1, 0.95, np.nan, 0.5, 0.2], "y": [0.0, 0.0, np.nan, 0.0, 0.0],
        "combination": [NO_FINDING, "Ca", None, "Ca", NO_FINDING],
        "explanation": ["no finding", "cardiac", None, "cardiac", "no finding"],
        "ood_score": [0.4, 2.5, np.nan, 1.0, 7.0],
        "needs_review": [False, True, None, False, True],
    })
    order = worklist(results, REFS)
    assert order["scan_id"].tolist() == ["c.png", "a.png", "odder.png", "odd.png", "broken.png"]
    assert order["needs_review"].tolist()[:4] == [False, False, True, True]
    flagged = order.iloc[2]
    assert np.isnan(flagged["triage_score"]) and flagged["decision"] == NO_FINDING
    assert flagged["why"].startswith("Needs human review: the scan lies outside what the model knows (OOD score 7.00 > 1)")
