"""Concordance as pair counts that add up over sites, with a leave-one-patient-out interval.

Harrell's c-index and the ROC AUC are both a ratio over patient pairs: ``(concordant + tied / 2)
/ pairs``. A site reports its pair counts, so a coordinator can pool the pairs of every site
without seeing a patient. For an interval, each site also reports three sums over its patients
``i``, where ``A_i`` is the credit of the pairs patient ``i`` belongs to (1 per concordant pair,
1/2 per tied one) and ``B_i`` the number of those pairs: ``sum A_i^2``, ``sum A_i B_i`` and
``sum B_i^2``. With ``C`` the pooled ratio and ``P`` the pairs, leaving patient ``i`` out moves
``C`` by about ``(C B_i - A_i) / P``, so the jackknife variance is

    var(C) = sum_i (A_i - C B_i)^2 / P^2 = (sum A^2 - 2 C sum AB + C^2 sum B^2) / P^2,

computed from the three sums alone (pairs are formed within a site, so a patient's pairs are
all at one site and the sums add up over sites). The interval is the normal one on that
standard error, clipped to [0, 1]. The three sums reveal no more about a patient than the
site's own metric does; they are aggregates over every test patient of the site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TIED_SCORE_TOLERANCE = 1e-8
"""Scores closer than this are a tie (the tolerance of scikit-survival's c-index)."""
ROWS_PER_CHUNK = 512
"""Patients per block of the pair matrix (bounds the memory of ``survival_pair_counts``)."""
NORMAL_95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95 % interval."""
PAIR_COUNT_KEYS = ("concordant", "discordant", "tied")
"""The integer counts of ``PairCounts.to_dict``."""
PAIR_SUM_KEYS = ("credit_squares", "credit_pair_products", "pair_squares")
"""The per-patient sums of ``PairCounts.to_dict`` (what the interval needs)."""


@dataclass(frozen=True)
class PairCounts:
    """Patient pairs a metric compares, by outcome: the score orders them right (concordant),
    wrong (discordant) or ties them, and the per-patient sums the interval needs (see the module
    docstring). Counts from several sites add up; the pooled metric is
    ``(concordant + tied / 2) / pairs``: Harrell's c-index, or the AUC for positive-negative pairs."""

    concordant: int = 0
    discordant: int = 0
    tied: int = 0
    credit_squares: float = 0.0
    """Sum over patients of A_i^2 (A_i: the credit of the pairs patient i belongs to)."""
    credit_pair_products: float = 0.0
    """Sum over patients of A_i * B_i (B_i: the number of pairs patient i belongs to)."""
    pair_squares: float = 0.0
    """Sum over patients of B_i^2."""

    @property
    def pairs(self) -> int:
        return self.concordant + self.discordant + self.tied

    @property
    def metric(self) -> float:
        """The pooled metric, NaN without a comparable pair."""
        return (self.concordant + 0.5 * self.tied) / self.pairs if self.pairs else float("nan")

    @property
    def standard_error(self) -> float:
        """Jackknife (leave-one-patient-out) standard error of ``metric``; NaN without pairs or
        when the per-patient sums were not reported (all zero)."""
        if not self.pairs or not self.pair_squares:
            return float("nan")
        c = self.metric
        spread = self.credit_squares - 2.0 * c * self.credit_pair_products + c * c * self.pair_squares
        return math.sqrt(max(spread, 0.0)) / self.pairs

    def interval(self, z: float = NORMAL_95) -> tuple[float, float] | None:
        """Normal interval ``metric +- z * standard_error`` clipped to [0, 1] (95 % by default);
        None when the standard error is unknown."""
        se = self.standard_error
        if math.isnan(se):
            return None
        return max(0.0, self.metric - z * se), min(1.0, self.metric + z * se)

    def __add__(self, other: PairCounts) -> PairCounts:
        return PairCounts(
            self.concordant + other.concordant,
            self.discordant + other.discordant,
            self.tied + other.tied,
            self.credit_squares + other.credit_squares,
            self.credit_pair_products + other.credit_pair_products,
            self.pair_squares + other.pair_squares,
        )

    def to_dict(self) -> dict[str, float]:
        """The counts and sums as plain numbers (what a site reports)."""
        return {key: getattr(self, key) for key in PAIR_COUNT_KEYS + PAIR_SUM_KEYS}


def _from_patients(concordant: int, discordant: int, tied: int, credit: np.ndarray, pairs: np.ndarray) -> PairCounts:
    return PairCounts(
        concordant,
        discordant,
        tied,
        float(np.sum(credit**2)),
        float(np.sum(credit * pairs)),
        float(np.sum(pairs.astype(float) ** 2)),
    )


def survival_pair_counts(scores: np.ndarray, time: np.ndarray, event: np.ndarray) -> PairCounts:
    """Harrell's comparable pairs, as scikit-survival forms them: patient i with an event and
    patient j with a longer time, or censored at the same time; concordant when i's risk score
    is higher, tied when the scores are within ``TIED_SCORE_TOLERANCE``."""
    scores, time, event = np.asarray(scores, float), np.asarray(time, float), np.asarray(event, bool)
    n = scores.size
    credit, pairs = np.zeros(n), np.zeros(n)
    concordant = discordant = tied = 0
    for start in range(0, n, ROWS_PER_CHUNK):
        rows = slice(start, min(start + ROWS_PER_CHUNK, n))
        t, s = time[rows, None], scores[rows, None]
        comparable = event[rows, None] & ((time[None, :] > t) | ((time[None, :] == t) & ~event[None, :]))
        difference = s - scores[None, :]
        tie = comparable & (np.abs(difference) <= TIED_SCORE_TOLERANCE)
        right = comparable & ~tie & (difference > 0)
        pair_credit = right + 0.5 * tie
        concordant += int(right.sum())
        tied += int(tie.sum())
        discordant += int(comparable.sum()) - int(right.sum()) - int(tie.sum())
        credit[rows] += pair_credit.sum(axis=1)
        credit += pair_credit.sum(axis=0)
        pairs[rows] += comparable.sum(axis=1)
        pairs += comparable.sum(axis=0)
    return _from_patients(concordant, discordant, tied, credit, pairs)


def binary_pair_counts(scores: np.ndarray, label: np.ndarray) -> PairCounts:
    """Every (positive, negative) pair: concordant when the positive scores higher (their ratio
    is the ROC AUC), tied on equal scores."""
    scores, label = np.asarray(scores, float), np.asarray(label, int)
    positives, negatives = scores[label == 1], scores[label == 0]
    sorted_negatives, sorted_positives = np.sort(negatives), np.sort(positives)
    below = np.searchsorted(sorted_negatives, positives, side="left")
    tied_positive = np.searchsorted(sorted_negatives, positives, side="right") - below
    above = len(positives) - np.searchsorted(sorted_positives, negatives, side="right")
    tied_negative = np.searchsorted(sorted_positives, negatives, side="right") - np.searchsorted(
        sorted_positives, negatives, side="left"
    )
    credit = np.concatenate([below + 0.5 * tied_positive, above + 0.5 * tied_negative])
    pairs = np.concatenate([np.full(len(positives), len(negatives)), np.full(len(negatives), len(positives))])
    concordant, tied = int(below.sum()), int(tied_positive.sum())
    return _from_patients(concordant, len(positives) * len(negatives) - concordant - tied, tied, credit, pairs)
