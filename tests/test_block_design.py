"""bench/block_design.py: the summary pools the ten panel cohorts only and pairs designs on the
same splits."""

from __future__ import annotations

import numpy as np

from fedlego_bench.block_design import summarise


def record(cohort: str, fold: int, shift: float) -> dict:
    """A split where the 'direct' design's blocks score ``shift`` above the method's."""
    rng = np.random.default_rng([fold, *map(ord, cohort)])
    plain = {"a": 0.6 + rng.normal(0, 0.01), "b": 0.7 + rng.normal(0, 0.01)}
    method = {"block": {m: v + rng.normal(0, 0.01) for m, v in plain.items()}, "merge": 0.72 + rng.normal(0, 0.01)}
    noise = rng.normal(0, 0.005)
    direct = {
        "block": {m: v + shift + noise for m, v in method["block"].items()},
        "merge": method["merge"] + shift + noise,
    }
    return {"cohort": cohort, "fold": fold, "plain": plain, "plain-late": 0.7, "method": method, "direct": direct}


def test_designs_are_paired_and_the_derived_cohort_is_not_pooled():
    records = [record(c, k, 0.02) for c in ("GBSG2", "Pbc3", "actg") for k in range(5)]
    records += [record("whas500-noise", k, -0.5) for k in range(5)]  # would dominate if pooled
    summary = summarise(records, ["method", "direct"])
    paired = summary["paired"]["direct - method"]
    for part in ("blocks", "merge"):
        assert paired[part]["low"] < 0.02 < paired[part]["high"] and abs(paired[part]["mean"] - 0.02) < 0.01
    assert paired["blocks"]["cohorts"] == 3
    assert summary["direct"]["block - plain"]["per_modality"]["whas500-noise:a"] < -0.4  # shown, not pooled
    assert summary["direct"]["worst block - plain"] > -0.1
