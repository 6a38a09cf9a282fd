"""Meta-analysis across cohorts: a random-effects mean of per-cohort paired differences."""

from __future__ import annotations

import numpy as np
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))


def variance_from_interval(low: float, high: float) -> float:
    """The variance of an estimate whose 95 % interval is [low, high] (normal approximation)."""
    return ((high - low) / (2 * Z95)) ** 2


def dersimonian_laird(means: list[float], variances: list[float]) -> dict[str, float]:
    """Random-effects (DerSimonian & Laird 1986) mean of per-cohort estimates with its 95 %
    interval and the between-cohort variance ``tau2``."""
    y, v = np.asarray(means, dtype=float), np.asarray(variances, dtype=float)
    w = 1 / v
    fixed = float((w * y).sum() / w.sum())
    q = float((w * (y - fixed) ** 2).sum())
    tau2 = max(0.0, (q - (len(y) - 1)) / (w.sum() - (w**2).sum() / w.sum())) if len(y) > 1 else 0.0
    w_star = 1 / (v + tau2)
    mean = float((w_star * y).sum() / w_star.sum())
    half = Z95 * float(np.sqrt(1 / w_star.sum()))
    return {"mean": mean, "low": mean - half, "high": mean + half, "tau2": tau2, "cohorts": len(y)}


def random_effects(estimates: list[tuple[float, float, float]]) -> dict[str, float] | None:
    """``dersimonian_laird`` of (mean, t_low, t_high) estimates, each variance from its 95 %
    interval; estimates without a finite, positive variance (e.g. never any difference) are left
    out. None when none is left."""
    kept = [(m, variance_from_interval(low, high)) for m, low, high in estimates]
    kept = [(m, v) for m, v in kept if np.isfinite(v) and v > 0]
    if not kept:
        return None
    return dersimonian_laird([m for m, _ in kept], [v for _, v in kept])
