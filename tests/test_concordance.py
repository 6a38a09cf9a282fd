"""Pair counts and the pooled metric's leave-one-patient-out interval."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from sksurv.exceptions import NoComparablePairException
from sksurv.metrics import concordance_index_censored

from fedlego.common.concordance import PairCounts, binary_pair_counts, survival_pair_counts


def _survival(rng: np.random.Generator, n: int, signal: float = 1.0):
    risk = rng.normal(size=n)
    time = np.round(rng.exponential(10 * np.exp(-signal * risk)), 1)  # rounded: tied times
    event = rng.random(n) < 0.7
    scores = np.round(risk + rng.normal(size=n), 1)  # rounded: tied scores
    return scores, time, event


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(0, 10_000))
def test_survival_counts_equal_scikit_survival(n, seed):
    scores, time, event = _survival(np.random.default_rng(seed), n)
    counts = survival_pair_counts(scores, time, event)
    if not event.any():
        assert counts.pairs == 0
        return
    try:
        with np.errstate(invalid="ignore"):  # scikit-survival divides 0 by 0 when no pair is comparable
            c, concordant, discordant, tied, _ = concordance_index_censored(event, time, scores)
    except NoComparablePairException:
        assert counts.pairs == 0
        return
    assert (counts.concordant, counts.discordant, counts.tied) == (concordant, discordant, tied)
    if counts.pairs:
        assert counts.metric == pytest.approx(c)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_binary_counts_give_the_auc(seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, 30)
    label[:2] = [0, 1]
    scores = np.round(rng.random(30) + 0.3 * label, 1)
    counts = binary_pair_counts(scores, label)
    assert counts.metric == pytest.approx(roc_auc_score(label, scores))


def _exact_jackknife_variance(counts_of_subsets, n: int) -> float:
    """The jackknife variance by recounting without each patient in turn."""
    left_out = np.array([counts_of_subsets(np.delete(np.arange(n), i)).metric for i in range(n)])
    return (n - 1) / n * float(np.sum((left_out - left_out.mean()) ** 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_standard_error_matches_the_exact_jackknife(seed):
    rng = np.random.default_rng(seed)
    scores, time, event = _survival(rng, 80)
    counts = survival_pair_counts(scores, time, event)
    exact = _exact_jackknife_variance(lambda rows: survival_pair_counts(scores[rows], time[rows], event[rows]), 80)
    assert counts.standard_error == pytest.approx(math.sqrt(exact), rel=0.1)
    label = (rng.random(80) < 0.4).astype(int)
    binary = binary_pair_counts(scores, label)
    exact = _exact_jackknife_variance(lambda rows: binary_pair_counts(scores[rows], label[rows]), 80)
    assert binary.standard_error == pytest.approx(math.sqrt(exact), rel=0.1)


def test_sites_add_up_to_the_pooled_counts_of_their_pairs():
    rng = np.random.default_rng(5)
    sites = [_survival(rng, n) for n in (9, 20, 40)]
    pooled = sum((survival_pair_counts(*site) for site in sites), PairCounts())
    parts = [survival_pair_counts(*site) for site in sites]
    assert pooled.pairs == sum(p.pairs for p in parts)
    assert pooled.pair_squares == pytest.approx(sum(p.pair_squares for p in parts))
    low, high = pooled.interval()
    assert 0.0 <= low < pooled.metric < high <= 1.0
    # more patients, narrower interval
    big = survival_pair_counts(*_survival(rng, 400))
    assert big.standard_error < pooled.standard_error


def test_interval_covers_the_truth_about_95_percent_of_the_time():
    """The population c-index of one fixed model, estimated on fresh test sets of 50 patients:
    its 95 % interval should cover the truth in about 95 % of draws (a broken variance misses)."""
    rng = np.random.default_rng(11)
    truth = survival_pair_counts(*_survival(rng, 6000)).metric
    covered = 0
    draws = 300
    for _ in range(draws):
        low, high = survival_pair_counts(*_survival(rng, 50)).interval()
        covered += low <= truth <= high
    assert 0.88 <= covered / draws <= 0.99


def test_no_interval_without_pairs_or_without_the_patient_sums():
    assert PairCounts().interval() is None
    assert PairCounts(10, 5, 1).interval() is None  # a site that reported counts only
