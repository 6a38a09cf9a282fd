"""The coordinator's task agreement: common survival bins from the sites' own quantiles."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from fedlego.common.concordance import PairCounts
from fedlego.common.protocol import SiteDescription
from fedlego.common.tasks import SurvivalTask
from fedlego.server.checks import aggregate_metrics, agree_task


def _site(name: str, events: int, cuts: list[float]) -> SiteDescription:
    return SiteDescription(name, "survival", 0, ["x"], ["tabular"], [10], [2], [2], events, cuts)


def test_bins_are_the_event_weighted_mean_whatever_order_the_sites_answered_in():
    sites = [_site("a", 3, [0.1, 1.3, 7.7]), _site("b", 11, [0.3, 2.9, 5.1]), _site("c", 7, [1 / 3, 2 / 3, 9.9])]
    tasks = {agree_task(list(order)).cut_points for order in itertools.permutations(sites)}
    assert len(tasks) == 1  # bit-identical, not only close
    (cuts,) = tasks
    assert cuts[0] == pytest.approx((3 * 0.1 + 11 * 0.3 + 7 / 3) / 21)


def test_a_site_whose_tied_times_collapsed_its_quantiles_does_not_stop_the_run():
    """A small hospital with times in whole months reports 2 cut points where the others report 3:
    the bins come from the others, the run is told, and nobody is excluded."""
    notes: list[str] = []
    sites = [_site("a", 30, [1.0, 2.0, 3.0]), _site("small", 5, [12.0, 24.0]), _site("b", 10, [2.0, 4.0, 6.0])]
    task = agree_task(sites, note=notes.append)
    assert task.cut_points == pytest.approx(((30 * 1 + 10 * 2) / 40, (30 * 2 + 10 * 4) / 40, (30 * 3 + 10 * 6) / 40))
    assert len(notes) == 1 and "small reported fewer than 3 time-bin cut points" in notes[0]
    assert agree_task(sites).cut_points == task.cut_points  # no note callback: same bins, silently


def test_the_task_carries_the_time_unit_the_sites_state_and_different_units_are_an_error():
    days = [dataclasses.replace(_site(n, 5, [1.0, 2.0, 3.0]), time_unit="days") for n in ("a", "b")]
    assert agree_task([*days, _site("silent", 5, [1.0, 2.0, 3.0])]).time_unit == "days"
    assert agree_task([_site("a", 5, [1.0, 2.0, 3.0])]).time_unit is None
    months = dataclasses.replace(_site("m", 5, [1.0, 2.0, 3.0]), time_unit="months")
    with pytest.raises(ValueError, match=r"different survival time units \(a: days, b: days, m: months\)"):
        agree_task([*days, months])


def test_sites_that_disagree_on_the_task_are_an_error():
    classification = SiteDescription("d", "binary", 2, ["x"], ["tabular"], [10], [2], [2])
    with pytest.raises(ValueError, match="disagree on the task"):
        agree_task([_site("a", 3, [1.0, 2.0, 3.0]), classification])


def test_metrics_pool_the_pairs_the_sites_report_and_tolerate_sites_without_counts():
    per_site = {
        "a": {"merge": {"metric": 1.0, "n": 3, "concordant": 2, "discordant": 0, "tied": 0}},
        "b": {"merge": {"metric": 0.25, "n": 10, "concordant": 10, "discordant": 28, "tied": 2}},
        "old": {"merge": {"metric": 0.9, "n": 5}},  # a site of an earlier version: no counts
    }
    merge = aggregate_metrics(per_site)["merge"]
    assert merge.pairs == 42
    assert merge.pooled == (12 + 1) / 42
    assert merge.weighted_mean == (3 * 1.0 + 10 * 0.25 + 5 * 0.9) / 18
    assert merge.pooled_low is None  # no site reported the per-patient sums: no interval


def test_pooled_interval_comes_from_the_sites_sums_and_only_when_all_reported_them():
    rng = np.random.default_rng(0)
    task = SurvivalTask((5.0, 10.0))
    sites = {}
    for name, n in (("a", 15), ("b", 40)):
        targets = {"time": torch.tensor(rng.exponential(10, n)), "event": torch.tensor(rng.random(n) < 0.7)}
        scores = rng.normal(size=n) - targets["time"].numpy() / 10
        sites[name] = {
            "merge": {"metric": task.metric(scores, targets), "n": n, **task.pair_counts(scores, targets).to_dict()}
        }
    merge = aggregate_metrics(sites)["merge"]
    counts = [PairCounts(**{k: v for k, v in s["merge"].items() if k not in ("metric", "n")}) for s in sites.values()]
    low, high = (counts[0] + counts[1]).interval()
    assert (merge.pooled_low, merge.pooled_high) == pytest.approx((low, high))
    assert merge.pooled_low < merge.pooled < merge.pooled_high
    sites["old"] = {"merge": {"metric": 0.9, "n": 5, "concordant": 4, "discordant": 1, "tied": 0}}
    assert aggregate_metrics(sites)["merge"].pooled_low is None  # one site without sums: no interval


def test_only_sites_with_min_cell_training_patients_of_two_merged_modalities_fuse():
    from fedlego.server.phases.fuse import paired_nodes

    def site(name, counts):
        return SiteDescription(name, "survival", 0, ["a", "b", "c"], ["tabular"] * 3, counts, [0] * 3, [0] * 3)

    sites = {1: site("both", [12, 15, 0]), 2: site("one-under", [30, 0, 0]), 3: site("unmerged", [20, 0, 40])}
    assert paired_nodes(sites, {"a", "b"}) == [1]
    assert paired_nodes(sites, {"a", "b", "c"}) == [1, 3]
