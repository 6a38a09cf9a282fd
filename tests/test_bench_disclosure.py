"""bench/disclosure.py's statistics: the random-effects mean and the paired summary."""

from __future__ import annotations

import numpy as np
import pytest

from fedlego_bench.disclosure import summarise
from fedlego_bench.meta import dersimonian_laird


def test_dersimonian_laird_is_the_fixed_mean_without_heterogeneity_and_widens_with_it():
    same = dersimonian_laird([0.01, 0.01, 0.01], [1e-4, 4e-4, 1e-4])
    assert same["mean"] == pytest.approx(0.01) and same["tau2"] == 0
    assert same["high"] - same["low"] == pytest.approx(2 * 1.959964 / np.sqrt(1e4 + 2.5e3 + 1e4))
    spread = dersimonian_laird([-0.2, 0.0, 0.2], [1e-4, 1e-4, 1e-4])
    assert spread["tau2"] > 0 and spread["mean"] == pytest.approx(0.0, abs=1e-12)
    assert spread["high"] - spread["low"] > same["high"] - same["low"]


def test_summary_pairs_splits_and_counts_the_changed_ones():
    def record(fold: int, before: float, after: float) -> dict:
        widths = {"m": 3}
        return {
            "dataset": "d",
            "repeat": 0,
            "fold": fold,
            "metrics": {"before": {"merge": before, "fuse": 0.7}, "min-cell": {"merge": after, "fuse": 0.7}},
            "feature_widths": {"before": widths, "min-cell": widths},
        }

    summary = summarise([record(0, 0.80, 0.78), record(1, 0.70, 0.70), record(2, 0.60, 0.59)])
    merge = summary["datasets"]["d"]["models"]["merge"]
    assert merge["difference"] == pytest.approx(-0.01) and merge["changed_splits"] == 2 and merge["splits"] == 3
    assert merge["t_low"] < -0.01 < merge["t_high"]
    assert "fuse" not in summary["random_effects"]  # never differs: no variance, left out
