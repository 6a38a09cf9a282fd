"""Prediction tasks: targets, losses, scores and metrics.

- Survival: discrete-time logistic hazard (one output per time bin; bins cut at quantiles of
  the uncensored training times); risk = minus the expected number of bins survived;
  metric: Harrell's concordance index (scikit-survival).
- Binary and multi-class classification: cross-entropy; metric: ROC AUC from predicted
  probabilities (scikit-learn; macro one-vs-rest for several classes), never from hard labels.

Targets are dicts of tensors: ``{"time", "event"}`` for survival, ``{"label"}`` otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedlego.common.concordance import PairCounts, binary_pair_counts, survival_pair_counts
from fedlego.common.time_units import TIME_UNITS

Targets = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SurvivalTask:
    """Discrete-time survival with a logistic hazard per bin (Gensheimer & Narasimhan, 2019);
    ``time_unit``: the unit of the times and cut points (one of ``TIME_UNITS``; None: not stated)."""

    cut_points: tuple[float, ...]
    kind: str = "survival"
    metric_name: str = "c-index"
    time_unit: str | None = None

    @classmethod
    def from_training(cls, times: np.ndarray, events: np.ndarray, n_bins: int = 4) -> SurvivalTask:
        """Bins from quantiles of the uncensored training times (all times if none died)."""
        times = np.asarray(times, dtype=float)
        uncensored = times[np.asarray(events).astype(bool)]
        reference = uncensored if uncensored.size >= n_bins else times
        cuts = np.unique(np.quantile(reference, np.linspace(0, 1, n_bins + 1)[1:-1]))
        return cls(tuple(float(c) for c in cuts))

    @property
    def n_outputs(self) -> int:
        return len(self.cut_points) + 1

    def bins(self, times: torch.Tensor) -> torch.Tensor:
        """Index of the time bin holding each time."""
        cuts = torch.tensor(self.cut_points, dtype=times.dtype, device=times.device)
        return torch.bucketize(times, cuts, right=True)

    def loss(self, logits: torch.Tensor, targets: Targets) -> torch.Tensor:
        """Negative log-likelihood: survive every bin before the event bin, then fail (events) or
        survive it too (censored)."""
        k = self.bins(targets["time"])
        event = targets["event"].float()
        log_survive = F.logsigmoid(-logits)
        before = torch.arange(logits.shape[1], device=logits.device)[None, :] < k[:, None]
        survived = (log_survive * before).sum(dim=1)
        at_bin_hazard = F.logsigmoid(logits.gather(1, k[:, None]).squeeze(1))
        at_bin_survive = log_survive.gather(1, k[:, None]).squeeze(1)
        likelihood = survived + event * at_bin_hazard + (1 - event) * at_bin_survive
        return -likelihood.mean()

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        """Risk score: minus the sum over bins of the survival curve (higher = riskier)."""
        survival = torch.cumprod(torch.sigmoid(-logits), dim=1)
        return (-survival.sum(dim=1)).detach().cpu().numpy()

    def metric(self, scores: np.ndarray, targets: Targets) -> float:
        """Harrell's c-index, NaN when no pair is comparable (fewer than two patients, no event, ...)."""
        event = targets["event"].cpu().numpy().astype(bool)
        time = targets["time"].cpu().numpy().astype(float)
        if event.size < 2 or not event.any():
            return float("nan")
        # scikit-survival (and scikit-learn) imported on use: 2 s of every deployed message's process
        from sksurv.exceptions import NoComparablePairException
        from sksurv.metrics import concordance_index_censored

        try:
            return float(concordance_index_censored(event, time, np.asarray(scores, dtype=float))[0])
        except NoComparablePairException:  # e.g. the only events are at the latest time
            return float("nan")

    def pair_counts(self, scores: np.ndarray, targets: Targets) -> PairCounts:
        """Harrell's comparable pairs (an event and a patient with a longer time) by outcome:
        the risk ranks them right, wrong, or ties them, with the per-patient sums of the pooled
        interval. Sums of these over sites give the pooled c-index (``PairCounts.metric``)."""
        event = targets["event"].cpu().numpy().astype(bool)
        time = targets["time"].cpu().numpy().astype(float)
        return survival_pair_counts(np.asarray(scores, dtype=float), time, event)

    def events(self, targets: Targets) -> int:
        """How much ranking information a set holds: its number of events."""
        return int(targets["event"].sum())

    def to_dict(self) -> dict[str, Any]:
        unit = {"time_unit": self.time_unit} if self.time_unit is not None else {}
        return {"kind": self.kind, "cut_points": list(self.cut_points), **unit}


@dataclass(frozen=True)
class ClassificationTask:
    """Binary (one logit) or multi-class (one logit per class) classification."""

    n_classes: int
    metric_name: str = "auc"

    @property
    def kind(self) -> str:
        return "binary" if self.n_classes == 2 else "multiclass"

    @property
    def n_outputs(self) -> int:
        return 1 if self.n_classes == 2 else self.n_classes

    def loss(self, logits: torch.Tensor, targets: Targets) -> torch.Tensor:
        label = targets["label"]
        if self.n_classes == 2:
            return F.binary_cross_entropy_with_logits(logits.squeeze(1), label.float())
        return F.cross_entropy(logits, label.long())

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        """Probability of the positive class (binary) or class probabilities (b, K)."""
        if self.n_classes == 2:
            return torch.sigmoid(logits.squeeze(1)).detach().cpu().numpy()
        return torch.softmax(logits, dim=1).detach().cpu().numpy()

    def metric(self, scores: np.ndarray, targets: Targets) -> float:
        """ROC AUC from scores (macro one-vs-rest for several classes), NaN for a single class."""
        from sklearn.metrics import roc_auc_score  # imported on use, as above

        label = targets["label"].cpu().numpy().astype(int)
        if np.unique(label).size < 2:
            return float("nan")
        if self.n_classes == 2:
            return float(roc_auc_score(label, scores))
        present = np.unique(label)
        if present.size < self.n_classes:
            probabilities = scores[:, present] / scores[:, present].sum(axis=1, keepdims=True)
            if present.size == 2:
                return float(roc_auc_score(label == present[1], probabilities[:, 1]))
            return float(roc_auc_score(label, probabilities, multi_class="ovr", average="macro", labels=present))
        return float(roc_auc_score(label, scores, multi_class="ovr", average="macro"))

    def pair_counts(self, scores: np.ndarray, targets: Targets) -> PairCounts:
        """Binary: each (positive, negative) pair, ranked right, wrong or tied by the score (their
        pooled ratio is the AUC). Several classes: no pooled counts (empty)."""
        if self.n_classes != 2:
            return PairCounts()
        return binary_pair_counts(scores, targets["label"].cpu().numpy().astype(int))

    def events(self, targets: Targets) -> int:
        """How much ranking information a set holds: the patients of its rarest class."""
        counts = torch.bincount(targets["label"].long(), minlength=self.n_classes)
        return int(counts.min())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_classes": self.n_classes}


Task = SurvivalTask | ClassificationTask


MAX_TIME_BINS = 64
MAX_CLASSES = 1000


def task_from_dict(state: dict[str, Any]) -> Task:
    """Rebuild a task from ``to_dict`` output; a malformed state is a ``ValueError`` naming the
    field (kind, at most ``MAX_TIME_BINS`` increasing finite cut points, 2 to ``MAX_CLASSES``
    classes)."""
    if not isinstance(state, dict):
        raise ValueError(f"a task must be an object, got {type(state).__name__}")
    kind = state.get("kind")
    if kind == "survival":
        cuts = state.get("cut_points")
        valid = isinstance(cuts, list) and len(cuts) <= MAX_TIME_BINS
        valid = valid and all(isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c) for c in cuts)
        if not valid or list(cuts) != sorted(set(cuts)):
            raise ValueError(f"survival cut_points must be at most {MAX_TIME_BINS} increasing finite numbers")
        unit = state.get("time_unit")
        if unit is not None and unit not in TIME_UNITS:
            raise ValueError(f"survival time_unit must be one of {list(TIME_UNITS)}, got {unit!r}")
        return SurvivalTask(tuple(float(c) for c in cuts), time_unit=unit)
    if kind in ("binary", "multiclass"):
        n = state.get("n_classes")
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_CLASSES or (kind == "binary") != (n == 2):
            raise ValueError(f"{kind} n_classes must be an integer in [2, {MAX_CLASSES}] (2 for binary), got {n!r}")
        return ClassificationTask(n)
    raise ValueError(f"unknown task kind {kind!r}; valid: survival, binary, multiclass")


def average_scores(scores: list[np.ndarray]) -> np.ndarray:
    """Prediction-averaging ensemble. For survival the mean risk equals the risk of the mean
    survival curve (risk is linear in the curve); for classification it averages probabilities."""
    return np.mean(np.stack(scores), axis=0)
