"""Pooled statistics from per-site summaries: what several sites' fitted preprocessing states
add up to, without any site's patients.

A site's state already carries the mean and spread of each feature over its training patients
(``common.data.preprocess``); the mean and spread over all the sites' patients follow exactly from
those and the sites' patient counts (the law of total variance), so pooling needs nothing more
than what the sites' block packages carry anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pooled_moments(
    means: Sequence[Sequence[float | None]], stds: Sequence[Sequence[float | None]], weights: Sequence[float]
) -> tuple[list[float], list[float]]:
    """The mean and standard deviation of each feature over the union of groups, from each group's
    mean, standard deviation (``ddof = 0``) and size. A group without a feature has None there and
    does not count towards it; every feature must be held by a group of positive size."""
    mean_rows = np.array(means, dtype=float)
    std_rows = np.array(stds, dtype=float)
    held = ~np.isnan(mean_rows)
    size = np.where(held, np.asarray(weights, dtype=float)[:, None], 0.0)
    total = size.sum(axis=0)
    if np.any(total <= 0):
        raise ValueError("every feature must be held by a group of positive size")
    mean_rows, std_rows = np.where(held, mean_rows, 0.0), np.where(held, std_rows, 0.0)
    mean = (size * mean_rows).sum(axis=0) / total
    second = (size * (std_rows**2 + mean_rows**2)).sum(axis=0) / total
    return mean.tolist(), np.sqrt(np.maximum(second - mean**2, 0.0)).tolist()


def weighted_mean(values: Sequence[Sequence[float | None]], weights: Sequence[float]) -> list[float]:
    """Each column's mean over the rows that hold it (None: absent), weighted by ``weights``."""
    rows = np.array(values, dtype=float)
    held = ~np.isnan(rows)
    size = np.where(held, np.asarray(weights, dtype=float)[:, None], 0.0)
    return ((size * np.where(held, rows, 0.0)).sum(axis=0) / size.sum(axis=0)).tolist()


def by_name(
    names: Sequence[Sequence[str]], values: Sequence[Sequence[float]], order: Sequence[str]
) -> list[list[float | None]]:
    """Per group, its values laid out in ``order`` (None where the group has no such name)."""
    rows = []
    for group_names, group_values in zip(names, values, strict=True):
        found = dict(zip(group_names, group_values, strict=True))
        rows.append([found.get(name) for name in order])
    return rows
