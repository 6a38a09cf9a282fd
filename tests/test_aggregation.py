"""Round aggregation: FedAvg's weighted mean and the robust options, and what one poisoned site
can and cannot do to the combined parameters."""

from __future__ import annotations

import pytest
import torch

from fedlego.common.aggregation import average_states, bound_updates, combine_states
from fedlego.common.config import RunConfig


def _honest(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {"w": torch.randn(4, 3, generator=generator) * 0.1 + 1.0, "b": torch.randn(3, generator=generator)}
        for _ in range(n)
    ]


def _poisoned(like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v * 0 + 1e6 for k, v in like.items()}


def test_mean_is_fedavg():
    states = _honest(3)
    torch.testing.assert_close(combine_states("mean", states, [1, 2, 3]), average_states(states, [1, 2, 3]))


@pytest.mark.parametrize("method", ["median", "trimmed-mean"])
def test_one_poisoned_site_cannot_move_a_robust_aggregate_out_of_the_honest_range(method):
    honest = _honest(4)
    combined = combine_states(method, [*honest, _poisoned(honest[0])], [1.0] * 5)
    for key in combined:
        stacked = torch.stack([h[key] for h in honest])
        assert (combined[key] >= stacked.min(dim=0).values - 1e-6).all()
        assert (combined[key] <= stacked.max(dim=0).values + 1e-6).all()
    dragged = combine_states("mean", [*honest, _poisoned(honest[0])], [1.0] * 5)
    assert float(dragged["w"].abs().max()) > 1e5  # what the same site does to FedAvg


def test_the_claimed_patient_count_buys_nothing_in_a_robust_aggregate():
    honest = _honest(3)
    states = [*honest, _poisoned(honest[0])]
    assert torch.equal(
        combine_states("median", states, [1, 1, 1, 10**9])["w"], combine_states("median", states, [1, 1, 1, 1])["w"]
    )


def test_the_median_of_identical_states_is_that_state_and_keeps_dtypes():
    state = {"w": torch.randn(2, 2), "steps": torch.tensor([3], dtype=torch.int64)}
    combined = combine_states("median", [state, state, state], [1, 1, 1])
    torch.testing.assert_close(combined, state)
    assert combined["steps"].dtype == torch.int64


def test_norm_bound_limits_a_large_update_to_the_cohort_scale():
    reference = {"w": torch.zeros(10)}
    states = [{"w": torch.full((10,), 0.1)}, {"w": torch.full((10,), 0.2)}, {"w": torch.full((10,), 50.0)}]
    bounded = bound_updates(reference, states, factor=2.0)
    median = float(torch.full((10,), 0.2).norm())
    assert float(bounded[2]["w"].norm()) == pytest.approx(2.0 * median)
    torch.testing.assert_close(bounded[0], states[0])  # small updates untouched
    mean = combine_states("mean", states, [1, 1, 1], reference, norm_bound=2.0)
    assert float(mean["w"].abs().max()) < 0.3  # the poisoned update no longer dominates FedAvg


def test_unknown_method_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown round aggregation"):
        combine_states("mode", _honest(2), [1, 1])
    with pytest.raises(ValueError, match="round-aggregation must be one of"):
        RunConfig.from_flat({"round-aggregation": "max"}).validate()
    with pytest.raises(ValueError, match="update-norm-bound"):
        RunConfig.from_flat({"update-norm-bound": -1.0}).validate()
    with pytest.raises(ValueError, match="fuse-dp-noise needs round-aggregation = mean"):
        RunConfig.from_flat({"round-aggregation": "median", "fuse-dp-noise": 1.0}).validate()
