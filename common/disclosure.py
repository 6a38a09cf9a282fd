"""Disclosure control: what a site may send, in the spirit of DataSHIELD's disclosure filters and
the minimum cell sizes of statistical offices.

Every aggregate that leaves a site (a category name, a median, mean or standard deviation, a time
cut point, a count of events, a metric over validation or test patients) must be computed over at
least ``min_cell`` patients; otherwise it is not sent. The threshold a site applies is the larger of
its own floor (``site.json``'s ``"min_cell"``) and the run's ``min-cell``: a coordinator can make a
site stricter, never laxer. ``min_cell = 1`` turns the control off (pooled, local use only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fedlego.common.data.errors import SiteDataError

DEFAULT_MIN_CELL = 10
"""Fewest patients behind any aggregate a site sends (the run-config key ``min-cell``)."""
CUT_POINT_DIGITS = 2
"""Significant digits of the survival time cut points a site sends: a cut point is then a round
number, not a quantile that can equal one patient's exact event time."""


class DisclosureError(SiteDataError):
    """An aggregate that would rest on fewer patients than the disclosure threshold (its message
    names the modality and the threshold, never a count, so it may be sent as it is)."""


def releasable(count: int | None, min_cell: int) -> bool:
    """Whether a statistic over ``count`` patients may leave the site."""
    return count is not None and count >= min_cell


def effective_min_cell(*thresholds: int | None) -> int:
    """The threshold a site applies: the strictest of those given (at least 1)."""
    return max([1, *(int(t) for t in thresholds if t is not None)])


def round_significant(value: float, digits: int = CUT_POINT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (0 stays 0)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def released_cut_points(cuts: Iterable[float], digits: int = CUT_POINT_DIGITS) -> list[float]:
    """Survival cut points as a site sends them: rounded to ``digits`` significant digits, ties
    that rounding made removed, increasing."""
    return sorted({round_significant(float(c), digits) for c in cuts})


def below_threshold(what: str, min_cell: int) -> str:
    """The reason a statistic is withheld (never the count itself, which would disclose it)."""
    return f"fewer than min-cell = {min_cell} {what}: not sent (disclosure control)"
