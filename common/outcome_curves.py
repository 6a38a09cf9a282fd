"""Outcome curves of a model's test predictions that a site may release, and their pooling.

What a person reading a report wants to see besides a c-index or an AUC:

- **survival**: Kaplan-Meier curves of the test patients whose predicted risk is above the
  site's median ("higher predicted risk") and at or below it ("lower predicted risk"). A site
  sends, per group and per time interval, the patients at risk at its start and the events in it:
  counts on a time grid derived from the run's (already released, rounded) survival cut points,
  and only while the interval's risk set holds at least ``min_cell`` patients (the curve of a
  group stops there; its remaining patients count as censored). No count it sends is between 1
  and ``min_cell - 1``: events and censorings are held back to a later interval until each
  reaches ``min_cell`` (``_group_counts``). A group of fewer than ``min_cell``
  patients is not sent. Scores, times and the median never leave the site.
- **binary classification**: ROC counts: for each of a fixed set of probability thresholds, the
  positives and the negatives scored at or above it, sent only when the site holds at least
  ``min_cell`` patients of each class; from one threshold to the next the counts change by 0 or by
  at least ``min_cell`` (smaller changes are held back to a lower threshold).

The coordinator sums the counts over sites (``pool_curves``); ``kaplan_meier`` turns a pooled group
into a curve with scikit-survival's estimator (events and censorings counted at the end of their
interval: a Kaplan-Meier estimate on grouped times), ``roc_points`` a pooled ROC into points.
Multi-class tasks have no curve. This module has no Flower import.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedlego.common.disclosure import releasable

STEPS_PER_BIN = 2
"""Grid intervals per survival time bin (the grid's points are derived from the cut points only)."""
ROC_THRESHOLDS = tuple(round(k / 20, 2) for k in range(21))
"""The probability thresholds of a released ROC curve."""
GROUPS = ("lower predicted risk", "higher predicted risk")
"""Survival risk groups: at or below, and above, the site's median predicted risk."""
MAX_GRID = 1024
"""The longest grid or threshold list a curve may have (a bound for malformed replies)."""

Curve = dict[str, Any]


def survival_grid(cut_points: Sequence[float]) -> list[float]:
    """Interval ends: each bin between 0 and the cut points split into ``STEPS_PER_BIN`` equal
    steps, and one bin's width past the last cut point (the width of the last bin before it)."""
    cuts = [float(c) for c in cut_points if c > 0]
    if not cuts:
        return []
    edges = [0.0, *cuts, cuts[-1] + (cuts[-1] - (cuts[-2] if len(cuts) > 1 else 0.0))]
    grid = []
    for start, end in itertools.pairwise(edges):
        grid += [start + (end - start) * (k + 1) / STEPS_PER_BIN for k in range(STEPS_PER_BIN)]
    return [round(g, 10) for g in grid]


def _no_small_cell(count: int, min_cell: int) -> bool:
    return count == 0 or releasable(count, min_cell)


def _group_counts(time: np.ndarray, event: np.ndarray, grid: Sequence[float], min_cell: int) -> dict[str, list[int]]:
    """At risk at each interval's start and events in it, with no count between 1 and
    ``min_cell - 1``: the events and censorings of an interval are held back, and reported with a
    later interval's, each until it is 0 or at least ``min_cell`` (the risk set keeps them
    meanwhile: the curve takes larger, later steps). Sent while the risk set holds at
    least ``min_cell`` patients; what is still held back when it stops is never sent."""
    at_risk, events = [], []
    remaining = np.ones_like(time, dtype=bool)
    risk_set, held_events, held_censored = int(remaining.sum()), 0, 0
    for end in grid:
        if not releasable(risk_set, min_cell):
            break
        leaving = remaining & (time <= end)
        remaining &= ~leaving
        held_events += int((leaving & event).sum())
        held_censored += int((leaving & ~event).sum())
        at_risk.append(risk_set)
        released_events = held_events if _no_small_cell(held_events, min_cell) else 0
        released_censored = held_censored if _no_small_cell(held_censored, min_cell) else 0
        events.append(released_events)
        risk_set -= released_events + released_censored
        held_events -= released_events
        held_censored -= released_censored
    return {"at_risk": at_risk, "events": events}


def survival_curve_counts(
    scores: np.ndarray, time: np.ndarray, event: np.ndarray, cut_points: Sequence[float], min_cell: int
) -> Curve | None:
    """The releasable Kaplan-Meier counts of the two risk groups (None: no group releasable)."""
    grid = survival_grid(cut_points)
    scores, time, event = np.asarray(scores, float), np.asarray(time, float), np.asarray(event).astype(bool)
    if not grid or scores.size == 0:
        return None
    higher = scores > np.median(scores)
    groups = {}
    for name, members in zip(GROUPS, (~higher, higher), strict=True):
        counts = _group_counts(time[members], event[members], grid, min_cell)
        if counts["at_risk"]:
            groups[name] = counts
    return {"kind": "survival", "grid": grid, "groups": groups} if groups else None


def roc_counts(scores: np.ndarray, labels: np.ndarray, min_cell: int) -> Curve | None:
    """Positives and negatives scored at or above each threshold, changing by 0 or at least
    ``min_cell`` between thresholds (None: a class under min_cell)."""
    scores, positive = np.asarray(scores, float), np.asarray(labels).astype(int) == 1
    if not (releasable(int(positive.sum()), min_cell) and releasable(int((~positive).sum()), min_cell)):
        return None
    true_positives, false_positives, tp, fp = [], [], 0, 0
    for threshold in reversed(ROC_THRESHOLDS):  # counts grow as the threshold falls
        above_tp, above_fp = int((scores[positive] >= threshold).sum()), int((scores[~positive] >= threshold).sum())
        tp = above_tp if _no_small_cell(above_tp - tp, min_cell) else tp  # else held back to a lower threshold
        fp = above_fp if _no_small_cell(above_fp - fp, min_cell) else fp
        true_positives.append(tp)
        false_positives.append(fp)
    return {
        "kind": "roc",
        "thresholds": list(ROC_THRESHOLDS),
        "positives": int(positive.sum()),
        "negatives": int((~positive).sum()),
        "true_positives": true_positives[::-1],
        "false_positives": false_positives[::-1],
    }


def _survival_from_targets(scores: np.ndarray, targets: Mapping[str, Any], task: Any, min_cell: int) -> Curve | None:
    time = targets["time"].cpu().numpy()
    event = targets["event"].cpu().numpy()
    return survival_curve_counts(scores, time, event, task.cut_points, min_cell)


def _roc_from_targets(scores: np.ndarray, targets: Mapping[str, Any], task: Any, min_cell: int) -> Curve | None:
    return roc_counts(scores, targets["label"].cpu().numpy(), min_cell)


CURVE_BUILDERS: dict[str, Callable[[np.ndarray, Mapping[str, Any], Any, int], Curve | None]] = {
    "survival": _survival_from_targets,
    "binary": _roc_from_targets,
}
"""Task kind -> the curve a site may release for it (multi-class: none)."""


def outcome_curve(scores: np.ndarray, targets: Mapping[str, Any], task: Any, min_cell: int) -> Curve | None:
    """The releasable outcome curve of a model's test ``scores`` for ``task`` (None: none)."""
    builder = CURVE_BUILDERS.get(task.kind)
    return builder(scores, targets, task, min_cell) if builder is not None else None


# -- checking what a site sent -------------------------------------------------------------------
def _counts(values: Any, length: int | None = None) -> bool:
    """A list of non-negative integers (of ``length``, when given) no longer than ``MAX_GRID``."""
    return (
        isinstance(values, list)
        and len(values) <= MAX_GRID
        and (length is None or len(values) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
    )


def _increasing(values: Any) -> bool:
    return (
        isinstance(values, list)
        and 0 < len(values) <= MAX_GRID
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        and all(a < b for a, b in itertools.pairwise(values))
    )


def _survival_problem(curve: Mapping[str, Any]) -> str | None:
    grid, groups = curve.get("grid"), curve.get("groups")
    if not _increasing(grid) or grid[0] <= 0:
        return "'grid' must be increasing positive numbers"
    if not isinstance(groups, dict) or not set(groups) <= set(GROUPS):
        return f"'groups' must be an object with keys among {list(GROUPS)}"
    for name, counts in groups.items():
        at_risk, events = (counts or {}).get("at_risk"), (counts or {}).get("events")
        if not (_counts(at_risk) and _counts(events, len(at_risk or [])) and len(at_risk) <= len(grid)):
            return f"group {name!r}: 'at_risk' and 'events' must be equal-length counts, one per grid interval"
        leaving = [a - e for a, e in zip(at_risk, events, strict=True)]
        if any(n < 0 for n in leaving) or any(nxt > left for nxt, left in zip(at_risk[1:], leaving, strict=False)):
            return f"group {name!r}: the risk set grows or has more events than patients"
    return None


def _roc_problem(curve: Mapping[str, Any]) -> str | None:
    thresholds = curve.get("thresholds")
    positives, negatives = curve.get("positives"), curve.get("negatives")
    if not _increasing(thresholds) or not _counts([positives, negatives]):
        return "'thresholds' must be increasing numbers and 'positives'/'negatives' counts"
    for key, total in (("true_positives", positives), ("false_positives", negatives)):
        values = curve.get(key)
        if not _counts(values, len(thresholds)) or any(v > total for v in values):
            return f"{key!r} must be one count per threshold, none above the class total"
        if any(b > a for a, b in itertools.pairwise(values)):
            return f"{key!r} must not grow with the threshold"
    return None


CURVE_CHECKS: dict[str, Callable[[Mapping[str, Any]], str | None]] = {
    "survival": _survival_problem,
    "roc": _roc_problem,
}


def curve_problem(curve: Any) -> str | None:
    """Why a curve a site sent is malformed (None when it is well formed)."""
    if not isinstance(curve, dict):
        return f"expected an object, got {type(curve).__name__}"
    check = CURVE_CHECKS.get(curve.get("kind"))
    if check is None:
        return f"unknown curve kind {curve.get('kind')!r}; valid: {sorted(CURVE_CHECKS)}"
    return check(curve)


# -- pooling and reading ---------------------------------------------------------------------------
def _pool_survival(curves: Sequence[Curve]) -> Curve | None:
    grid = curves[0]["grid"]
    same = [c for c in curves if c["grid"] == grid]
    pooled: dict[str, dict[str, list[int]]] = {}
    for curve in same:
        for name, counts in curve["groups"].items():
            at_risk, events = counts["at_risk"], counts["events"]
            following = [*at_risk[1:], 0]  # past the last interval sent: censored at its end
            censored = [a - e - f for a, e, f in zip(at_risk, events, following, strict=True)]
            total = pooled.setdefault(name, {k: [0] * len(grid) for k in ("at_risk", "events", "censored")})
            for j, values in enumerate(zip(at_risk, events, censored, strict=True)):
                for key, value in zip(("at_risk", "events", "censored"), values, strict=True):
                    total[key][j] += value
    for counts in pooled.values():
        last = max((j for j, n in enumerate(counts["at_risk"]) if n > 0), default=-1)
        for key in counts:
            counts[key] = counts[key][: last + 1]
    return {"kind": "survival", "grid": grid, "groups": pooled, "sites": len(same)}


def _pool_roc(curves: Sequence[Curve]) -> Curve | None:
    thresholds = curves[0]["thresholds"]
    same = [c for c in curves if c["thresholds"] == thresholds]
    pooled: Curve = {"kind": "roc", "thresholds": thresholds, "sites": len(same)}
    for key in ("positives", "negatives"):
        pooled[key] = sum(c[key] for c in same)
    for key in ("true_positives", "false_positives"):
        pooled[key] = [sum(values) for values in zip(*(c[key] for c in same), strict=True)]
    return pooled


POOLERS: dict[str, Callable[[Sequence[Curve]], Curve | None]] = {"survival": _pool_survival, "roc": _pool_roc}


def pool_curves(curves: Sequence[Curve]) -> Curve | None:
    """The counts of every site's curve summed (sites on another grid than the first are left
    out, ``sites`` says how many were pooled); None when no site sent one."""
    curves = [c for c in curves if c]
    if not curves:
        return None
    kind = curves[0]["kind"]
    return POOLERS[kind]([c for c in curves if c["kind"] == kind])


def kaplan_meier(grid: Sequence[float], counts: Mapping[str, Sequence[int]]) -> tuple[np.ndarray, ...]:
    """(times, survival, lower, upper) of a pooled group: scikit-survival's Kaplan-Meier estimator
    with its 95 % log-log interval, on rows rebuilt from the counts (each event and censoring at
    the end of its interval), starting from (0, 1)."""
    from sksurv.nonparametric import kaplan_meier_estimator

    events, censored = counts["events"], counts["censored"]
    times = np.repeat(
        np.concatenate([grid[: len(events)], grid[: len(censored)]]), np.concatenate([events, censored]).astype(int)
    )
    observed = np.repeat([True, False], [int(sum(events)), int(sum(censored))])
    if times.size == 0:
        return tuple(np.array([value]) for value in (0.0, 1.0, 1.0, 1.0))
    if not observed.any():  # nobody had the event: the curve stays at 1
        end = float(times.max())
        return np.array([0.0, end]), np.ones(2), np.ones(2), np.ones(2)
    at, survival, interval = kaplan_meier_estimator(observed, times, conf_type="log-log")
    return (
        np.concatenate([[0.0], at]),
        np.concatenate([[1.0], survival]),
        np.concatenate([[1.0], interval[0]]),
        np.concatenate([[1.0], interval[1]]),
    )


def roc_points(curve: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of a pooled ROC, from (1, 1) to (0, 0)."""
    tpr = np.asarray(curve["true_positives"], float) / max(curve["positives"], 1)
    fpr = np.asarray(curve["false_positives"], float) / max(curve["negatives"], 1)
    return np.concatenate([[1.0], fpr, [0.0]]), np.concatenate([[1.0], tpr, [0.0]])
