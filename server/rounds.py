"""The round loop shared by block FedAvg and the fuse rounds.

Each round sends the current parameters to a cohort of sites, collects their replies, records the
validation loss the sites measured before training (over all their validation patients), and
aggregates the returned parameters; one last round only evaluates. The caller builds the
messages, exchanges them, chooses the aggregation (FedAvg, or central DP-FedAvg for fuse) and
records each round (audit, checkpoint).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fedlego.common.aggregation import average_states, update_norm, weighted_mean
from fedlego.common.protocol import RoundReply, RoundRequest
from fedlego.server.exchange import FederationError

StateDict = dict[str, torch.Tensor]
FAR_FACTOR = 3.0
"""A site's round update over this many times the round's median update is reported as far."""
Aggregate = Callable[[StateDict, dict[int, RoundReply], list[float], int], StateDict]
"""(parameters sent, replies by node, their sample counts, number of sites asked) -> new parameters"""


def fedavg(reference: StateDict, answered: dict[int, RoundReply], counts: list[float], asked: int) -> StateDict:
    """Plain FedAvg: the replies' parameters weighted by their sample counts."""
    return average_states([reply.state for reply in answered.values()], counts)


def reply_problem(sent: StateDict, reply: RoundReply) -> str | None:
    """Why a training round's reply cannot be combined with the others (None when it can): its
    parameters must be exactly those sent, each of the same shape and kind of dtype (a floating
    tensor may come back in another float precision) and finite."""
    missing, extra = sorted(set(sent) - set(reply.state)), sorted(set(reply.state) - set(sent))
    if missing or extra:
        return f"its parameters differ from those sent: missing {missing[:3]}, unexpected {extra[:3]}"
    for name, tensor in reply.state.items():
        expected = sent[name]
        if tuple(tensor.shape) != tuple(expected.shape):
            return f"parameter {name!r} has shape {tuple(tensor.shape)}, {tuple(expected.shape)} was sent"
        if tensor.dtype != expected.dtype and not (tensor.is_floating_point() and expected.is_floating_point()):
            return f"parameter {name!r} has dtype {tensor.dtype}, {expected.dtype} was sent"
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"parameter {name!r} holds NaN or inf"
    return None


def valid_replies(
    sent: StateDict, answered: dict[int, RoundReply], refuse: Callable[[int, str], None]
) -> dict[int, RoundReply]:
    """The replies that can be combined, their parameters cast to the dtypes sent; each other one
    is passed to ``refuse`` with its reason and costs only that site's part in the round."""
    kept = {}
    for node, reply in answered.items():
        problem = reply_problem(sent, reply)
        if problem is not None:
            refuse(node, f"round reply refused: {problem}")
            continue
        reply.state = {k: v.to(sent[k].dtype) for k, v in reply.state.items()}
        kept[node] = reply
    return kept


def median_of_finite(values: list[float]) -> float:
    """The median of the finite values (NaN if none)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(statistics.median(finite)) if finite else float("nan")


@dataclass
class Round:
    """One finished exchange: its index, whether it only evaluated, the replies by node and their
    validation loss (weighted by the sites' validation patients; the median in a robust round)."""

    index: int
    final: bool
    answered: dict[int, RoundReply]
    validation_loss: float
    update_norms: dict[int, float] = field(default_factory=dict)
    """Per node, the L2 norm of its returned parameters minus those the round sent (training rounds)."""
    stopped: bool = False
    """The validation loss stopped improving: this round's training was not kept and no round follows."""

    def far_nodes(self, factor: float = FAR_FACTOR) -> dict[int, float]:
        """Nodes whose update is over ``factor`` times the median update of the round (three or
        more sites), with that ratio: a site whose block moves far from the others'."""
        if len(self.update_norms) < 3:
            return {}
        middle = statistics.median(self.update_norms.values())
        if middle <= 0:
            return {}
        return {n: norm / middle for n, norm in self.update_norms.items() if norm > factor * middle}

    @property
    def validation_patients(self) -> int | None:
        """The validation patients the sites measured this round's loss on (None if a site did
        not say)."""
        return _total([reply.n_validation for reply in self.answered.values()])

    @property
    def validation_events(self) -> int | None:
        """Their events (survival) or rarest-class patients (classification), summed over sites."""
        return _total([reply.validation_events for reply in self.answered.values()])


def _events(reply: RoundReply) -> float:
    return float(reply.train_events if reply.train_events is not None else reply.n_train)


SITE_WEIGHTS: dict[str, Callable[[RoundReply], float]] = {
    "patients": lambda reply: float(reply.n_train),
    "events": _events,
}
"""``site-weights`` -> a site's weight in a round's aggregate (events: its training events, or its
patients from a site that does not say them)."""


def site_weights(answered: dict[int, RoundReply], kind: str) -> list[float]:
    """Each answering site's weight in the round's aggregate; by training patients when every
    weight would be 0 (no site released its events: all under min-cell)."""
    weights = [SITE_WEIGHTS[kind](reply) for reply in answered.values()]
    return weights if sum(weights) > 0 else [float(reply.n_train) for reply in answered.values()]


def loss_weights(answered: dict[int, RoundReply]) -> list[float]:
    """Weights of the sites' validation losses in a round's mean: their validation patients, so the
    mean is the loss over every validation patient; their training patients when a site did not
    say (older sites)."""
    replies = list(answered.values())
    if all(reply.n_validation is not None for reply in replies):
        return [float(reply.n_validation) for reply in replies]  # type: ignore[arg-type]
    return [float(reply.n_train) for reply in replies]


def _total(counts: list[int | None]) -> int | None:
    return None if any(c is None for c in counts) else sum(counts)  # type: ignore[arg-type]


@dataclass
class Rounds:
    """At most ``total`` training rounds on one set of parameters, then one evaluate-only round.

    ``states[0]`` is the start and ``states[i]`` what training round ``i - 1`` produced;
    ``history[i]`` is the validation loss the sites reported for ``states[i]`` in round ``i``.
    With ``patience`` > 0 the rounds stop early, once that many rounds in a row failed to beat the
    best round so far (``best(margin)``): ``total`` is then a budget. Built from a checkpoint's
    states and history, ``run`` continues after the last finished round.
    """

    total: int
    states: list[StateDict]
    history: list[float] = field(default_factory=list)
    patience: int = 0
    margin: float = 0.0
    unvalidated: str = "start"
    """Which round to keep when no round has a validation loss (no site could report one under
    the disclosure threshold): ``start`` (the parameters the rounds started from) or ``last``."""
    stopped_early: bool = False
    """Set when the rounds stopped on ``patience`` before the budget ran out."""
    cut_short: str | None = None
    """Why the rounds stopped before their budget when too few sites answered a round after at
    least one round had answered (the rounds finished so far are kept, the best of them chosen)."""

    def stalled(self) -> bool:
        """Whether the last ``patience`` rounds all failed to improve on the best round."""
        return self.patience > 0 and len(self.history) - 1 - self.best(self.margin) >= self.patience

    @property
    def next_round(self) -> int:
        """The index of the first round still to run."""
        return len(self.history)

    def run(
        self,
        cohort: list[int],
        request: Callable[[int, bool, StateDict], RoundRequest],
        exchange: Callable[[dict[int, RoundRequest]], dict[int, RoundReply]],
        on_round: Callable[[Round], None],
        aggregate: Aggregate = fedavg,
        drop_lost: bool = False,
        robust: bool = False,
        refuse: Callable[[int, str], None] = lambda node, reason: None,
        weights: str = "patients",
    ) -> None:
        """Run the remaining rounds. ``request(index, final, state)`` is the message every node of
        the cohort gets; ``exchange`` sends the requests and returns the replies
        (raising when too few answered); ``on_round`` is called after each round is aggregated.
        With ``drop_lost``, a site that did not answer a round is not asked again. With
        ``robust``, a round's validation loss is the median of the sites' reports (unweighted), so
        neither a claimed patient count nor one site's report decides which round is kept.
        ``weights`` (``SITE_WEIGHTS``) weighs the sites in the aggregate.
        A training round's reply that cannot be combined (``reply_problem``) is passed to
        ``refuse`` and left out of the round; with none left the run cannot go on (FederationError).
        When too few sites answer a round after earlier rounds were answered (the sites vanished),
        the rounds stop there (``cut_short``) and the best round so far is kept; when not even the
        first round was answered the FederationError goes to the caller."""
        for index in range(self.next_round, self.total + 1):
            if self.stalled():  # a resumed run that had stopped
                self.stopped_early = True
                return
            final = index == self.total
            sent = self.states[-1]
            requests = dict.fromkeys(cohort, request(index, final, sent))
            try:
                answered = exchange(requests)
            except FederationError as error:
                if not self.history:
                    raise
                self.cut_short = f"round {index}: {error}"
                return
            if not final:
                answered = valid_replies(sent, answered, refuse)
                if not answered:
                    raise FederationError(f"round {index}: no site sent parameters that could be combined")
            counts = site_weights(answered, weights)
            losses = [reply.validation_loss_before for reply in answered.values()]
            self.history.append(median_of_finite(losses) if robust else weighted_mean(losses, loss_weights(answered)))
            if drop_lost:
                cohort = [n for n in cohort if n in answered]
            stopped = not final and self.stalled()
            norms = {} if final else {n: update_norm(sent, reply.state) for n, reply in answered.items()}
            if not final and not stopped:
                self.states.append(aggregate(sent, answered, counts, len(requests)))
            on_round(Round(index, final or stopped, answered, self.history[-1], norms, stopped))
            if stopped:
                self.stopped_early = True
                return

    def best(self, margin: float = 0.0) -> int:
        """The round with the lowest validation loss: the earliest on ties, a NaN loss never
        (round 0 when every loss is NaN). A later round replaces round 0 (the parameters the
        rounds started from) only when its loss is below round 0's by ``margin`` (a fraction)."""
        loss = [math.inf if math.isnan(v) else v for v in self.history]
        if not loss:
            return 0
        if self.unvalidated == "last" and not any(math.isfinite(v) for v in loss):
            return len(self.states) - 1
        threshold = loss[0] - margin * abs(loss[0]) if math.isfinite(loss[0]) else math.inf
        better = [i for i in range(1, len(loss)) if loss[i] < threshold]
        return min(better, key=lambda i: loss[i]) if better else 0
