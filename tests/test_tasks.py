"""Survival and classification tasks: bins, losses, scores and library metrics."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sksurv.metrics import concordance_index_censored

from fedlego.common.tasks import ClassificationTask, SurvivalTask, average_scores, task_from_dict


def test_survival_bins_come_from_uncensored_training_times():
    times = np.array([1, 2, 3, 4, 100, 200, 300, 400], dtype=float)
    events = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    task = SurvivalTask.from_training(times, events, n_bins=4)
    assert task.cut_points == pytest.approx((1.75, 2.5, 3.25))  # censored times ignored
    assert task.n_outputs == 4
    bins = task.bins(torch.tensor([0.5, 2.0, 3.0, 50.0]))
    assert bins.tolist() == [0, 1, 2, 3]


def test_survival_loss_rewards_hazard_in_the_event_bin():
    task = SurvivalTask((1.0, 2.0))
    targets = {"time": torch.tensor([1.5]), "event": torch.tensor([1])}
    right = torch.tensor([[-5.0, 5.0, 0.0]])  # survive bin 0, fail in bin 1
    wrong = torch.tensor([[5.0, -5.0, 0.0]])
    assert task.loss(right, targets) < task.loss(wrong, targets)
    censored = {"time": torch.tensor([1.5]), "event": torch.tensor([0])}
    survive = torch.tensor([[-5.0, -5.0, 0.0]])
    assert task.loss(survive, censored) < task.loss(right, censored)


def test_survival_risk_orders_by_hazard_and_c_index_matches_sksurv():
    task = SurvivalTask((1.0, 2.0))
    low, high = torch.full((1, 3), -3.0), torch.full((1, 3), 3.0)
    scores = task.scores(torch.cat([low, high]))
    assert scores[1] > scores[0]
    rng = np.random.default_rng(0)
    time = rng.uniform(1, 10, 40)
    event = rng.integers(0, 2, 40)
    risk = -time + rng.normal(0, 3, 40)
    targets = {"time": torch.tensor(time), "event": torch.tensor(event)}
    expected = concordance_index_censored(event.astype(bool), time, risk)[0]
    assert task.metric(risk, targets) == pytest.approx(expected)
    assert np.isnan(task.metric(risk, {"time": torch.tensor(time), "event": torch.zeros(40)}))


def test_binary_auc_is_computed_from_scores_not_labels():
    task = ClassificationTask(2)
    label = torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[0.1], [0.4], [0.35], [0.8]])
    scores = task.scores(logits)
    assert task.metric(scores, {"label": label}) == pytest.approx(roc_auc_score(label, scores))
    assert task.metric(scores, {"label": label}) == pytest.approx(0.75)  # hard labels would give 0.5


def test_multiclass_macro_auc_and_missing_classes():
    task = ClassificationTask(3)
    assert task.n_outputs == 3
    logits = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    label = torch.arange(30) % 3
    scores = task.scores(logits)
    expected = roc_auc_score(label, scores, multi_class="ovr", average="macro")
    assert task.metric(scores, {"label": label}) == pytest.approx(expected)
    two = task.metric(scores[:20][label[:20] != 2], {"label": label[:20][label[:20] != 2]})
    assert 0.0 <= two <= 1.0
    assert np.isnan(task.metric(scores[:5], {"label": torch.zeros(5, dtype=torch.long)}))


def test_task_round_trip_and_ensemble_average():
    for task in (SurvivalTask((1.0, 2.0)), ClassificationTask(2), ClassificationTask(4)):
        assert task_from_dict(task.to_dict()) == task
    np.testing.assert_allclose(average_scores([np.array([1.0, 3.0]), np.array([3.0, 5.0])]), [2.0, 4.0])


def test_c_index_is_nan_when_no_pair_is_comparable():
    task = SurvivalTask((1.0, 2.0))
    # the only event is at the latest time: nobody is known to outlive anyone
    targets = {"time": torch.tensor([1.0, 2.0, 3.0]), "event": torch.tensor([0, 0, 1])}
    assert np.isnan(task.metric(np.array([0.1, 0.2, 0.3]), targets))
    assert np.isnan(task.metric(np.array([0.1]), {"time": torch.tensor([1.0]), "event": torch.tensor([1])}))


def _survival_targets(rng, n):
    return {"time": torch.tensor(rng.exponential(10, n)), "event": torch.tensor(rng.random(n) < 0.6)}


def test_pair_counts_give_the_c_index_and_pool_over_sites():
    rng = np.random.default_rng(3)
    task = SurvivalTask((5.0, 10.0))
    sites = []
    for n in (7, 12, 30):
        targets = _survival_targets(rng, n)
        scores = np.round(rng.normal(size=n) - targets["time"].numpy() / 10, 1)  # some ties
        counts = task.pair_counts(scores, targets)
        assert counts.metric == pytest.approx(task.metric(scores, targets))
        sites.append((scores, targets, counts))
    pooled = sites[0][2] + sites[1][2] + sites[2][2]
    concordant = sum(s[2].concordant for s in sites)
    tied = sum(s[2].tied for s in sites)
    assert pooled.pairs == sum(s[2].pairs for s in sites)
    assert pooled.metric == pytest.approx((concordant + 0.5 * tied) / pooled.pairs)
    # pooling is not the mean of the sites' c-indices weighted by patients
    weighted = sum(len(s[0]) * s[2].metric for s in sites) / sum(len(s[0]) for s in sites)
    assert pooled.metric != pytest.approx(weighted, abs=1e-6)


def test_binary_pair_counts_give_the_auc_with_ties():
    rng = np.random.default_rng(4)
    label = rng.integers(0, 2, 40)
    scores = np.round(rng.random(40) + 0.3 * label, 1)
    counts = ClassificationTask(2).pair_counts(scores, {"label": torch.tensor(label)})
    assert counts.pairs == (label == 1).sum() * (label == 0).sum()
    assert counts.tied > 0
    assert counts.metric == pytest.approx(roc_auc_score(label, scores))


def test_no_pairs_without_events_or_for_several_classes():
    task = SurvivalTask((5.0,))
    none = task.pair_counts(np.zeros(3), {"time": torch.ones(3), "event": torch.zeros(3, dtype=torch.bool)})
    assert none.pairs == 0 and np.isnan(none.metric)
    multi = ClassificationTask(3).pair_counts(np.ones((4, 3)) / 3, {"label": torch.tensor([0, 1, 2, 0])})
    assert multi.pairs == 0
