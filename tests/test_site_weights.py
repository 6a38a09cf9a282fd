"""What weighs a site in a round (``site-weights``) and which site's block the rounds start from
(``start-site``): two settings, each doing only its own job."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedlego.common.config import RunConfig
from fedlego.server.phases.block_fedavg import ordered_candidates
from fedlego.server.rounds import site_weights

SITES = {"big": (200, 0), "sick": (40, 30), "mid": (90, 12)}
"""Site -> (training patients, training events as released)."""


def _federation(**settings: str) -> SimpleNamespace:
    config = RunConfig.from_flat(settings)
    sites = {
        i: SimpleNamespace(site=name, n_train_events=events) for i, (name, (_, events)) in enumerate(SITES.items())
    }
    return SimpleNamespace(settings=config, sites=sites)


def _candidates() -> list:
    return [(SimpleNamespace(site=name, n_samples=n), None) for name, (n, _) in SITES.items()]


@pytest.mark.parametrize("weights", ["patients", "events"])
def test_the_start_follows_start_site_whatever_the_weights(weights):
    by_events = ordered_candidates(_federation(**{"start-site": "events", "site-weights": weights}), _candidates())
    by_patients = ordered_candidates(_federation(**{"start-site": "patients", "site-weights": weights}), _candidates())
    assert [p.site for p, _ in by_events] == ["sick", "mid", "big"]
    assert by_patients[0][0].site == "big"


def test_a_round_weighs_sites_by_patients_or_released_events():
    replies = {i: SimpleNamespace(n_train=n, train_events=e) for i, (n, e) in enumerate(SITES.values())}
    assert site_weights(replies, "patients") == [200.0, 40.0, 90.0]
    assert site_weights(replies, "events") == [0.0, 30.0, 12.0]
    unreleased = {i: SimpleNamespace(n_train=n, train_events=0) for i, (n, _) in enumerate(SITES.values())}
    assert site_weights(unreleased, "events") == [200.0, 40.0, 90.0]  # none released: by patients
