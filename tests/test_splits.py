"""The realistic-split benchmark's sites (Flower Datasets' partitioners) and its page."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedlego_bench.splits import DIRICHLET_SITES, MIN_SITE, changes, dirichlet_sites, merged_records, natural_sites
from fedlego_bench.splits_page import rows, write_splits_page


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    generator = np.random.default_rng(0)
    unit = ["a"] * 120 + ["b"] * 90 + ["c"] * 12 + ["d"] * 8 + ["e"] * 70
    return pd.DataFrame({"pid": [f"p{i}" for i in range(300)], "unit": unit, "event": generator.integers(0, 2, 300)})


def test_natural_sites_follow_the_covariate_and_merge_the_smallest(table):
    sites = natural_sites(table, "unit")
    assert sorted(len(v) for v in sites.values()) == [90, 90, 120]  # d (8) joins c (12), then both join e
    assert min(len(v) for v in sites.values()) >= MIN_SITE
    every = [i for ids in sites.values() for i in ids]
    assert sorted(every) == sorted(table["pid"]) and len(every) == len(set(every))
    units = {name: set(table.set_index("pid").loc[ids, "unit"]) for name, ids in sites.items()}
    assert {"a"} in units.values() and any(len(u) > 1 for u in units.values())  # c and d joined another


def test_dirichlet_sites_cover_every_patient_once_and_depend_on_the_seed(table):
    first, again, other = dirichlet_sites(table, 0), dirichlet_sites(table, 0), dirichlet_sites(table, 1)
    assert len(first) == DIRICHLET_SITES and first == again and first != other
    every = [i for ids in first.values() for i in ids]
    assert sorted(every) == sorted(table["pid"]) and len(every) == len(set(every))
    assert min(len(v) for v in first.values()) >= MIN_SITE


def test_the_page_reports_the_paired_difference_per_strategy(tmp_path):
    record = {
        "cohort": "c",
        "seed": 0,
        "centralized": {"test": 0.70},
        "splits": {
            "natural": {
                "sizes": {},
                "centralized_sites": {"a": 0.6, "b": 0.7},
                "strategies": {
                    "fedavg": {"test": 0.68, "sites": {"a": 0.6, "b": 0.8}, "validation_loss": 1.2},
                    "fedyogi": {"error": "phase describe failed"},
                },
            }
        },
    }
    other = {"natural": {**record["splits"]["natural"], "centralized_sites": {"a": 0.7, "b": 0.8}}}
    summary = {
        "records": [record, {**record, "seed": 1, "centralized": {"test": 0.66}, "splits": other}],
        "strategies": {"fedavg": {}, "fedyogi": {}},
        "wall_seconds": 60,
    }
    (fedavg,) = [r for r in rows(summary) if r["strategy"] == "fedavg"]
    assert fedavg["difference"] == pytest.approx([-0.02, 0.02]) and fedavg["runs"] == 2
    assert fedavg["sites_sd"] == 0 and fedavg["centralized_sites_sd"] == pytest.approx(0.1 / 2**0.5)
    write_splits_page(summary, tmp_path / "splits.md", "python bench/splits.py")
    page = (tmp_path / "splits.md").read_text()
    assert "| c | natural | fedavg | +0.000 [" in page and "| 0.000 | 0.071 | 1.2000 | 2 |" in page
    assert "| fedyogi | nan | n/a | n/a | 0 |" in page and "(1 split)" in page
    assert "the same draw for every training seed" in page


def test_records_of_one_cohort_and_seed_merge_so_strategies_pair():
    first = {"cohort": "c", "seed": 0, "centralized": {"test": 0.7}, "splits": {"natural": {"strategies": {"a": {}}}}}
    later = {"cohort": "c", "seed": 0, "centralized": {"test": 0.7}, "splits": {"natural": {"strategies": {"b": {}}}}}
    other = {**first, "seed": 1}
    merged = merged_records([json.dumps(r) for r in (first, later, other)] + [""])
    assert [(r["cohort"], r["seed"]) for r in merged] == [("c", 0), ("c", 1)]
    assert set(merged[0]["splits"]["natural"]["strategies"]) == {"a", "b"}
    assert set(merged[1]["splits"]["natural"]["strategies"]) == {"a"}
    recorded = {**later, "splits": {"natural": {"strategies": {"b": {}}, "centralized_sites": {}}}}
    with pytest.raises(ValueError, match="two benchmark protocols"):  # an old record with a new one
        merged_records([json.dumps(first), json.dumps(recorded)])


def test_a_strategy_is_paired_with_its_own_earlier_runs():
    def record(seed: int, test: float, validation: float) -> dict:
        run = {"test": test, "validation": validation}
        return {"cohort": "c", "seed": seed, "splits": {"natural": {"strategies": {"s": run}}}}

    now = [record(0, 0.70, 0.80), record(1, 0.72, 0.81), record(2, 0.60, 0.60)]
    then = [record(0, 0.68, 0.80), record(1, 0.72, 0.79)]  # seed 2 never ran before: not paired
    assert changes(now, then, ["s", "absent"]) == {
        "s": {"test": pytest.approx([0.02, 0.0]), "validation": pytest.approx([0.0, 0.02])},
        "absent": {"test": [], "validation": []},
    }
