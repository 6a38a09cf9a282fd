"""Patient-level folds and federated scenario construction."""

from __future__ import annotations

import numpy as np
import pytest

from fedlego.common.data.scenarios import (
    build_scenario,
    dataset_splits,
    dataset_strata,
    describe_scenario,
    patient_splits,
    site_dataset,
    site_split,
)
from fedlego.common.data.synthetic import SyntheticModality, make_synthetic

COMPLETE = [
    SyntheticModality("tab", "tabular", 1.0, 0.0, 4),
    SyntheticModality("ts", "timeseries", 1.0, 0.0, 2),
    SyntheticModality("bag", "bags", 1.0, 0.0, 3),
]


@pytest.fixture(scope="module")
def data():
    return make_synthetic(300, COMPLETE, seed=0)


def test_splits_disjoint_covering_and_sized(data):
    ids = data.patient_ids()
    for fold in dataset_splits(data):
        parts = [set(fold.train), set(fold.validation), set(fold.test)]
        assert sum(map(len, parts)) == len(ids)
        assert set.union(*parts) == set(ids)
        assert abs(len(fold.train) / len(ids) - 0.7) < 0.02
        assert abs(len(fold.test) / len(ids) - 0.15) < 0.02


def test_splits_seeded_and_folds_differ(data):
    a, b = dataset_splits(data, seed=1), dataset_splits(data, seed=1)
    assert a == b
    assert a[0].test != a[1].test
    shifted = dataset_splits(data, seed=2)[0]  # fold k uses seed + k
    assert (shifted.train, shifted.validation, shifted.test) == (
        a[1].train,
        a[1].validation,
        a[1].test,
    )


def test_stratification_keeps_event_rate(data):
    events = dict(zip(data.patient_ids(), dataset_strata(data), strict=True))
    overall = np.mean(list(events.values()))
    for fold in dataset_splits(data):
        for part in (fold.train, fold.validation, fold.test):
            assert abs(np.mean([events[i] for i in part]) - overall) < 0.05


def test_tiny_stratum_falls_back_to_random_split():
    ids = [f"p{i}" for i in range(20)]
    folds = patient_splits(ids, [0] * 19 + [1], n_folds=2)
    assert all(len(f.train) + len(f.validation) + len(f.test) == 20 for f in folds)
    with pytest.raises(ValueError):
        patient_splits(ids, None, fractions=(0.5, 0.5, 0.5))


def _unimodal(scenario):
    return [s for s in scenario.sites if not s.name.startswith("paired")]


def test_overlap_zero_gives_disjoint_unimodal_sites(data):
    scenario = build_scenario(data, overlap=0.0, paired_fraction=0.2, seed=0)
    sites = _unimodal(scenario)
    assert [s.modalities for s in sites] == [["tab"], ["ts"], ["bag"]]
    seen = [set(s.patient_ids) for s in sites]
    assert all(not a & b for i, a in enumerate(seen) for b in seen[i + 1 :])
    paired = [s for s in scenario.sites if s.name.startswith("paired")]
    assert len(paired) == 1 and len(paired[0].patient_ids) == 60
    assert set.union(*seen, set(paired[0].patient_ids)) == set(data.patient_ids())
    assert not set.union(*seen) & set(paired[0].patient_ids)


def test_overlap_one_gives_identical_unimodal_sites(data):
    sites = _unimodal(build_scenario(data, overlap=1.0, paired_fraction=0.2))
    assert len({tuple(s.patient_ids) for s in sites}) == 1
    assert len(sites[0].patient_ids) == 240


def test_imbalance_skews_counts(data):
    def spread(imbalance: float) -> int:
        counts = [len(s.patient_ids) for s in _unimodal(build_scenario(data, imbalance=imbalance))]
        return max(counts) - min(counts)

    assert spread(0.9) > spread(0.0) + 40


def test_scenario_seeded_and_multi_site(data):
    kwargs = {"sites_per_modality": 2, "paired_sites": 2, "seed": 5}
    a, b = build_scenario(data, **kwargs), build_scenario(data, **kwargs)
    assert a == b
    assert [s.name for s in a.sites] == [
        "tab-0",
        "tab-1",
        "ts-0",
        "ts-1",
        "bag-0",
        "bag-1",
        "paired-0",
        "paired-1",
    ]


def test_missing_rate_withholds_modalities_at_paired_sites(data):
    scenario = build_scenario(data, paired_fraction=0.5, missing_rate=0.5, seed=0)
    paired = scenario.sites[-1]
    n_withheld = sum(len(v) for v in paired.withheld.values())
    assert 0.35 < n_withheld / len(paired.patient_ids) < 0.65
    local = site_dataset(data, paired)
    for name, withheld in paired.withheld.items():
        assert not set(withheld) & set(local.modalities[name].patient_ids())
    assert set(local.patient_ids()) == set(paired.patient_ids)


def test_site_split_is_subset_of_global_split(data):
    scenario = build_scenario(data, overlap=0.3, seed=1)
    fold = dataset_splits(data)[0]
    for site in scenario.sites:
        local = site_split(site, data, fold)
        for role, ids in (("train", fold.train), ("validation", fold.validation)):
            assert set(local[role]) <= set(ids) & set(site.patient_ids)
        assert set(local["test"]) <= set(fold.test)
        assert sum(map(len, local.values())) == len(site.patient_ids)


def test_unimodal_sites_only_hold_patients_with_data():
    data = make_synthetic(200, [SyntheticModality(n, "tabular", 1.0, 0.4, 3) for n in "ab"])
    for site in _unimodal(build_scenario(data, overlap=0.5)):
        holders = set(data.modalities[site.modalities[0]].patient_ids())
        assert set(site.patient_ids) <= holders


def test_site_dataset_and_description(data):
    scenario = build_scenario(data, seed=0)
    site = scenario.sites[0]
    local = site_dataset(data, site)
    assert list(local.modalities) == site.modalities
    assert set(local.labels.patient_ids()) == set(site.patient_ids)
    rows = describe_scenario(scenario, data)
    assert [r["site"] for r in rows] == [s.name for s in scenario.sites]
    assert rows[0]["per_modality"] == {"tab": len(site.patient_ids)}
    assert all(isinstance(v, (int, str, list, dict)) for r in rows for v in r.values())
    assert "P0000" not in repr(rows)


def test_pooled_layout_and_bad_knobs(data):
    pooled = build_scenario(data, "pooled")
    assert len(pooled.sites) == 1 and pooled.sites[0].patient_ids == data.patient_ids()
    with pytest.raises(ValueError):
        build_scenario(data, "vertical")
    with pytest.raises(ValueError):
        build_scenario(data, imbalance=1.0)
