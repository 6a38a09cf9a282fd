"""Outcome curves (common/outcome_curves.py): what a site releases stays over min-cell, pooling
sums the counts, the grouped Kaplan-Meier equals scikit-survival's on the raw times when those fall
on the grid, pooled ROC points equal the ones computed on all patients, and no malformed curve from
a site passes or crashes the check."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sksurv.nonparametric import kaplan_meier_estimator

from fedlego.common.outcome_curves import (
    GROUPS,
    ROC_THRESHOLDS,
    curve_problem,
    kaplan_meier,
    outcome_curve,
    pool_curves,
    roc_counts,
    roc_points,
    survival_curve_counts,
    survival_grid,
)
from fedlego.common.protocol import EvaluateReply
from fedlego.common.tasks import ClassificationTask, SurvivalTask

CUTS = (100.0, 250.0, 400.0)


def test_the_grid_comes_from_the_cut_points_only():
    grid = survival_grid(CUTS)
    assert grid == [50.0, 100.0, 175.0, 250.0, 325.0, 400.0, 475.0, 550.0]
    assert survival_grid([]) == [] and survival_grid([7.0]) == [3.5, 7.0, 10.5, 14.0]


def test_a_site_sends_no_risk_set_under_min_cell_and_no_small_group():
    rng = np.random.default_rng(0)
    time, event, scores = rng.uniform(1, 600, 40), rng.random(40) < 0.6, rng.normal(size=40)
    curve = survival_curve_counts(scores, time, event, CUTS, min_cell=8)
    assert curve is not None and set(curve["groups"]) == set(GROUPS)
    for counts in curve["groups"].values():
        assert counts["at_risk"][0] == 20 and all(n >= 8 for n in counts["at_risk"])
        assert curve_problem(curve) is None
    assert survival_curve_counts(scores[:10], time[:10], event[:10], CUTS, min_cell=8) is None  # groups of 5


def test_grouped_kaplan_meier_equals_scikit_survival_on_times_that_fall_on_the_grid():
    grid = survival_grid(CUTS)
    rng = np.random.default_rng(1)
    time = rng.choice(grid, 200)
    event = rng.random(200) < 0.5
    scores = np.zeros(200)  # every patient in the lower group
    curve = pool_curves([survival_curve_counts(scores, time, event, CUTS, min_cell=1)])
    at, survival, low, high = kaplan_meier(curve["grid"], curve["groups"]["lower predicted risk"])
    expected_at, expected, (expected_low, expected_high) = kaplan_meier_estimator(event, time, conf_type="log-log")
    np.testing.assert_allclose(survival[1:], expected, atol=1e-12)
    np.testing.assert_allclose(at[1:], expected_at)
    np.testing.assert_allclose(low[1:], expected_low, atol=1e-12)
    np.testing.assert_allclose(high[1:], expected_high, atol=1e-12)


def test_pooling_sums_each_sites_counts_and_a_truncated_site_counts_as_censored():
    rng = np.random.default_rng(2)
    sites = [
        survival_curve_counts(rng.normal(size=n), rng.uniform(1, 600, n), rng.random(n) < 0.5, CUTS, min_cell=5)
        for n in (30, 60)
    ]
    pooled = pool_curves(sites)
    assert pooled["sites"] == 2
    for name in GROUPS:
        counts = pooled["groups"][name]
        for j, n in enumerate(counts["at_risk"]):
            assert n == sum(s["groups"][name]["at_risk"][j] for s in sites if j < len(s["groups"][name]["at_risk"]))
        leaving = np.array(counts["events"]) + np.array(counts["censored"])
        assert leaving.sum() == counts["at_risk"][0]  # every patient leaves by an event or censoring
    assert pool_curves([None, None]) is None


def test_pooled_roc_points_equal_the_rates_on_all_patients():
    rng = np.random.default_rng(3)
    sites = [(rng.random(n), rng.random(n) < 0.4) for n in (50, 80)]
    pooled = pool_curves([roc_counts(s, y, min_cell=1) for s, y in sites])
    scores = np.concatenate([s for s, _ in sites])
    labels = np.concatenate([y for _, y in sites])
    fpr, tpr = roc_points(pooled)
    for k, threshold in enumerate(ROC_THRESHOLDS):
        assert tpr[k + 1] == pytest.approx((scores[labels] >= threshold).mean())
        assert fpr[k + 1] == pytest.approx((scores[~labels] >= threshold).mean())
    assert roc_counts(np.ones(12), np.array([1] * 3 + [0] * 9), min_cell=5) is None  # 3 positives


def test_roc_counts_change_by_no_small_cell_and_stay_close():
    rng = np.random.default_rng(4)
    labels = rng.random(300) < 0.4
    scores = np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1)
    curve = roc_counts(scores, labels, min_cell=10)
    for key in ("true_positives", "false_positives"):
        steps = [a - b for a, b in itertools.pairwise([*curve[key], 0])]  # by rising threshold, to none
        assert all(s == 0 or s >= 10 for s in steps), curve[key]
    assert curve_problem(curve) is None
    fpr, tpr = roc_points(curve)
    exact_fpr, exact_tpr = roc_points(roc_counts(scores, labels, min_cell=1))
    assert np.max(np.abs(tpr - exact_tpr)) <= 10 / labels.sum() + 1e-9
    assert np.max(np.abs(fpr - exact_fpr)) <= 10 / (~labels).sum() + 1e-9


def test_the_task_picks_the_curve_and_multiclass_has_none():
    scores = np.linspace(0, 1, 40)
    survival = {"time": torch.linspace(1, 500, 40), "event": torch.ones(40)}
    assert outcome_curve(scores, survival, SurvivalTask(CUTS), 5)["kind"] == "survival"
    binary = {"label": torch.tensor([0, 1] * 20)}
    assert outcome_curve(scores, binary, ClassificationTask(2), 5)["kind"] == "roc"
    assert outcome_curve(scores, {"label": torch.tensor([0, 1, 2, 3] * 10)}, ClassificationTask(4), 5) is None


MALFORMED = [
    ("not an object", "expected an object"),
    ({"kind": "pie"}, "unknown curve kind"),
    ({"kind": "survival", "grid": [1.0, float("nan")], "groups": {}}, "'grid'"),
    ({"kind": "survival", "grid": [2.0, 1.0], "groups": {}}, "'grid'"),
    ({"kind": "survival", "grid": [1.0], "groups": {"someone": {}}}, "'groups'"),
    ({"kind": "survival", "grid": [1.0, 2.0], "groups": {GROUPS[0]: {"at_risk": [10, 12], "events": [0, 0]}}}, "grows"),
    ({"kind": "survival", "grid": [1.0], "groups": {GROUPS[0]: {"at_risk": [10], "events": [11]}}}, "more events"),
    ({"kind": "survival", "grid": [1.0], "groups": {GROUPS[0]: {"at_risk": [True], "events": [0]}}}, "counts"),
    ({"kind": "survival", "grid": [1.0], "groups": {GROUPS[0]: {"at_risk": [10, 9], "events": [0, 0]}}}, "one per"),
    ({"kind": "roc", "thresholds": [0.0, 0.5], "positives": 5, "negatives": 5}, "'true_positives'"),
    (
        {
            "kind": "roc",
            "thresholds": [0.0, 0.5],
            "positives": 5,
            "negatives": 5,
            "true_positives": [5, 6],
            "false_positives": [5, 1],
        },
        "above the class total",
    ),
    (
        {
            "kind": "roc",
            "thresholds": [0.0, 0.5],
            "positives": 5,
            "negatives": 5,
            "true_positives": [2, 4],
            "false_positives": [5, 1],
        },
        "must not grow",
    ),
]


@pytest.mark.parametrize(("curve", "words"), MALFORMED)
def test_malformed_curves_are_named(curve, words):
    problem = curve_problem(curve)
    assert problem is not None and words in problem


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["survival", "roc", "x"])},
        optional={
            "grid": JSON,
            "groups": st.dictionaries(st.sampled_from([*GROUPS, "z"]), JSON, max_size=2),
            "thresholds": JSON,
            "positives": JSON,
            "negatives": JSON,
            "true_positives": JSON,
            "false_positives": JSON,
        },
    )
)
def test_no_curve_crashes_the_check_or_the_pooling(curve):
    problem = curve_problem(curve)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert pool_curves([curve, curve]) is not None


def test_a_malformed_curve_in_an_evaluate_reply_costs_only_the_curve():
    good = survival_curve_counts(np.arange(40.0), np.linspace(1, 500, 40), np.ones(40, bool), CUTS, min_cell=5)
    reply = EvaluateReply(
        {"merge": {"metric": 0.7, "n": 40}, "fuse": {"metric": 0.8, "n": 40}},
        curves={"merge": good, "fuse": {"kind": "survival", "grid": "x"}},
    )
    back = EvaluateReply.from_payload(reply.to_payload())
    assert set(back.results) == {"merge", "fuse"} and back.curves == {"merge": json.loads(json.dumps(good))}
    assert back.errors["curve:fuse"].startswith("malformed outcome curve: 'grid'")


def test_no_released_count_is_a_small_cell_and_the_curve_stays_close():
    rng = np.random.default_rng(3)
    n, min_cell = 400, 10
    time, event = rng.exponential(300, n), rng.random(n) < 0.6
    curve = survival_curve_counts(np.zeros(n), time, event, CUTS, min_cell=min_cell)
    counts = curve["groups"]["lower predicted risk"]
    at_risk, events = counts["at_risk"], counts["events"]
    drops = [a - b for a, b in itertools.pairwise(at_risk)]
    censored = [d - e for d, e in zip(drops, events, strict=False)]
    for values in (events, drops, censored):
        assert all(v == 0 or v >= min_cell for v in values), values
    assert curve_problem(curve) is None
    # the held-back counts move steps later, not the curve's level: close to the raw Kaplan-Meier
    pooled = pool_curves([curve])
    at, survival, _, _ = kaplan_meier(pooled["grid"], pooled["groups"]["lower predicted risk"])
    raw_at, raw_survival = kaplan_meier_estimator(event, time)
    raw_on_grid = np.interp(at[1:], raw_at, raw_survival)
    assert np.max(np.abs(survival[1:] - raw_on_grid)) < 0.1
