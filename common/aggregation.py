"""Aggregation arithmetic in one place: weighted means of metrics, FedAvg of state dicts,
DP-FedAvg (clipped updates plus Gaussian noise) and the per-block weights of a merge."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedlego.common.registry import Registry

if TYPE_CHECKING:
    from fedlego.common.lego import LegoBlock


def weighted_mean(values: list[float], weights: list[float]) -> float:
    """Mean of the finite values weighted by ``weights`` (NaN if none)."""
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if np.isfinite(v) and w > 0]
    if not pairs:
        return float("nan")
    return float(sum(v * w for v, w in pairs) / sum(w for _, w in pairs))


def average_states(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """FedAvg: the weighted mean of state dicts with identical keys and shapes."""
    if not states:
        raise ValueError("nothing to average")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("FedAvg weights sum to zero")
    keys = list(states[0])
    for index, state in enumerate(states[1:], start=1):
        if list(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise ValueError(f"state {index} does not match the shapes of state 0")
    return {
        key: (sum(w * s[key].double() for s, w in zip(states, weights, strict=True)) / total).to(states[0][key].dtype)
        for key in keys
    }


RoundAggregation = Callable[[Sequence[Mapping[str, torch.Tensor]], Sequence[float]], dict[str, torch.Tensor]]
ROUND_AGGREGATIONS: Registry[RoundAggregation] = Registry("round-aggregation")
"""How a round combines the sites' parameters: FedAvg's sample-weighted mean, or the robust
coordinate-wise median / trimmed mean (unweighted: a site's claimed patient count buys nothing)."""
TRIM_FRACTION = 0.2
"""Share of the sites dropped at each end, per coordinate, by the trimmed mean (at least one)."""


def _stacked(states: Sequence[Mapping[str, torch.Tensor]], key: str) -> torch.Tensor:
    return torch.stack([s[key].double() for s in states])


@ROUND_AGGREGATIONS.register("mean")
def _mean_round(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """FedAvg: weighted by the sites' training patients."""
    return average_states(states, weights)


@ROUND_AGGREGATIONS.register("median")
def _median_round(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The coordinate-wise median of the sites' parameters."""
    return {k: _stacked(states, k).median(dim=0).values.to(v.dtype) for k, v in states[0].items()}


@ROUND_AGGREGATIONS.register("trimmed-mean")
def _trimmed_round(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The coordinate-wise mean without the ``TRIM_FRACTION`` highest and lowest sites (three or more)."""
    trim = max(1, math.floor(TRIM_FRACTION * len(states))) if len(states) >= 3 else 0
    combined = {}
    for key, value in states[0].items():
        ordered = _stacked(states, key).sort(dim=0).values
        combined[key] = ordered[trim : len(states) - trim].mean(dim=0).to(value.dtype)
    return combined


def combine_states(
    method: str,
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    reference: Mapping[str, torch.Tensor] | None = None,
    norm_bound: float = 0.0,
) -> dict[str, torch.Tensor]:
    """One round's aggregate of the sites' states. With ``norm_bound`` > 0 and a ``reference``
    (the parameters the round sent), each site's update is first scaled down to at most
    ``norm_bound`` times the median update norm of the round, so one site cannot move the model
    further than the others do. ``method``: see ``ROUND_AGGREGATIONS``."""
    aggregate = ROUND_AGGREGATIONS[method]
    if not states:
        raise ValueError("nothing to aggregate")
    if norm_bound > 0 and reference is not None:
        states = bound_updates(reference, states, norm_bound)
    return aggregate(states, weights)


def update_norm(reference: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of the update ``state - reference`` over the floating tensors both hold."""
    keys = [k for k in reference if reference[k].is_floating_point() and k in state]
    return float(_flat({k: state[k] - reference[k] for k in keys}, keys).norm())


def bound_updates(
    reference: Mapping[str, torch.Tensor], states: Sequence[Mapping[str, torch.Tensor]], factor: float
) -> list[dict[str, torch.Tensor]]:
    """The states with each update (state - reference) scaled to L2 norm at most ``factor`` x the
    median update norm of all the states (over all tensors together)."""
    keys = [k for k in reference if reference[k].is_floating_point()]
    norms = [update_norm(reference, s) for s in states]
    limit = factor * float(np.median(norms))
    bounded = []
    for state, norm in zip(states, norms, strict=True):
        scale = min(1.0, limit / norm) if norm > 0 else 1.0
        bounded.append(
            {k: (reference[k] + scale * (v - reference[k])).to(v.dtype) if k in keys else v for k, v in state.items()}
        )
    return bounded


def _flat(update: Mapping[str, torch.Tensor], keys: Sequence[str]) -> torch.Tensor:
    return torch.cat([update[k].double().reshape(-1) for k in keys]) if keys else torch.zeros(0, dtype=torch.float64)


def dp_average_updates(
    reference: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    clip: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """DP-FedAvg with fixed clipping: each site's update (state - reference) clipped to L2 norm
    ``clip`` over all tensors together, Gaussian noise N(0, (noise_multiplier * clip)^2) added to
    the sum, divided by the number of sites; returns reference + that mean and a summary (the
    update norms before clipping and how many were clipped). Without a generator the noise is
    seeded from the OS's randomness."""
    if not states:
        raise ValueError("nothing to aggregate")
    if clip <= 0:
        raise ValueError("clipping norm must be positive")
    keys = [k for k in reference if torch.is_floating_point(reference[k])]
    for index, state in enumerate(states):
        if set(state) != set(reference) or any(state[k].shape != reference[k].shape for k in reference):
            raise ValueError(f"state {index} does not match the reference's keys and shapes")
    total = torch.zeros(sum(reference[k].numel() for k in keys), dtype=torch.float64)
    norms = []
    for state in states:
        update = _flat({k: state[k].double() - reference[k].double() for k in keys}, keys)
        norm = float(update.norm())
        norms.append(norm)
        total += update * min(1.0, clip / norm) if norm > 0 else update
    if noise_multiplier > 0:
        if generator is None:
            generator = torch.Generator().manual_seed(secrets.randbits(63))
        total += torch.normal(0.0, noise_multiplier * clip, total.shape, generator=generator, dtype=torch.float64)
    mean = total / len(states)
    result: dict[str, torch.Tensor] = {}
    offset = 0
    for key, value in reference.items():
        if key in keys:
            size = value.numel()
            result[key] = (value.double() + mean[offset : offset + size].reshape(value.shape)).to(value.dtype)
            offset += size
        else:
            result[key] = value.clone()
    return result, {"update_norms": norms, "clipped": sum(norm > clip for norm in norms)}


def _score_or_chance(score: float | None) -> float:
    return 0.5 if score is None or not math.isfinite(score) else float(score)


FUSE_AGGREGATIONS: Registry[Callable[[float], float]] = Registry("fuse-aggregation")
"""The local objective of the fuse rounds: the proximal weight each name gives its training."""


@FUSE_AGGREGATIONS.register("fedavg")
def _fedavg_proximal(proximal_mu: float) -> float:
    """FedAvg: the plain local loss."""
    return 0.0


@FUSE_AGGREGATIONS.register("fedprox")
def _fedprox_proximal(proximal_mu: float) -> float:
    """FedProx: the local loss plus ``proximal_mu / 2`` times the squared distance from the round's start."""
    return proximal_mu


Weighting = Callable[[Mapping[str, "LegoBlock"]], dict[str, float]]
WEIGHTINGS: Registry[Weighting] = Registry("weighting")
"""How LegoMerge weighs the blocks (the weights are renormalised over the blocks present)."""


@WEIGHTINGS.register("uniform")
def _uniform_weights(blocks: Mapping[str, LegoBlock]) -> dict[str, float]:
    """Every block alike (the default: chosen on the panel's validation patients)."""
    return dict.fromkeys(blocks, 1.0)


@WEIGHTINGS.register("samples")
def _sample_weights(blocks: Mapping[str, LegoBlock]) -> dict[str, float]:
    """By the block's training patients."""
    return {m: float(max(b.n_samples, 1)) for m, b in blocks.items()}


@WEIGHTINGS.register("validation")
def _validation_weights(blocks: Mapping[str, LegoBlock]) -> dict[str, float]:
    """max(score - 0.5, 0.01): skill above chance for c-index and AUC; a block without a usable
    score (none, or NaN when its validation set had no comparable pair) counts as chance."""
    return {m: max(_score_or_chance(b.validation_score) - 0.5, 0.01) for m, b in blocks.items()}


def block_weights(blocks: Mapping[str, LegoBlock], scheme: str | Mapping[str, float]) -> dict[str, float]:
    """Merge weights per modality: a registered weighting (``WEIGHTINGS``) or given per modality."""
    if isinstance(scheme, Mapping):
        missing = set(blocks) - set(scheme)
        if missing:
            raise ValueError(f"merge weights missing for {sorted(missing)}")
        return {m: float(scheme[m]) for m in blocks}
    return WEIGHTINGS[scheme](blocks)


class ServerOptimizer:
    """How the coordinator steps from the parameters a round sent to the next round's, given the
    round's aggregate of the sites' parameters. ``fedavg`` takes the aggregate; the adaptive ones
    (Reddi et al. 2021, "Adaptive Federated Optimization") treat ``aggregate - sent`` as a
    pseudo-gradient with server momentum ``m`` and a second moment ``v``, in the same arithmetic as
    Flower's FedAdam, FedYogi and FedAdagrad strategies (``tests/test_server_optimizers.py`` checks
    them against Flower's). The state (``m``, ``v``, the step) is saved with the fuse checkpoint."""

    def __init__(self, lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        self.lr, self.beta1, self.beta2, self.tau = lr, beta1, beta2, tau
        self.steps = 0
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def _second_moment(self, v: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _step_size(self) -> float:
        return self.lr

    def step(self, sent: Mapping[str, torch.Tensor], aggregate: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The next round's parameters (non-floating tensors take the aggregate's values)."""
        self.steps += 1
        size = self._step_size()
        out = {}
        for key, value in aggregate.items():
            if not value.is_floating_point():
                out[key] = value
                continue
            delta = value.double() - sent[key].double()
            m = self.m.get(key, torch.zeros_like(delta))
            v = self.v.get(key, torch.zeros_like(delta))
            self.m[key] = self.beta1 * m + (1 - self.beta1) * delta
            self.v[key] = self._second_moment(v, delta * delta)
            out[key] = (sent[key].double() + size * self.m[key] / (self.v[key].sqrt() + self.tau)).to(value.dtype)
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """The optimizer's state as tensors (for a checkpoint)."""
        state = {f"m.{k}": v for k, v in self.m.items()} | {f"v.{k}": v for k, v in self.v.items()}
        return state | {"steps": torch.tensor(self.steps)}

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Continue from ``state()`` saved before a restart."""
        self.steps = int(state.get("steps", torch.tensor(0)))
        self.m = {k[2:]: v for k, v in state.items() if k.startswith("m.")}
        self.v = {k[2:]: v for k, v in state.items() if k.startswith("v.")}


SERVER_OPTIMIZERS: Registry[type[ServerOptimizer]] = Registry("server-optimizer")
"""How block FedAvg and fuse rounds step from one round's parameters to the next."""


@SERVER_OPTIMIZERS.register("fedavg")
class _FedAvgStep(ServerOptimizer):
    """The aggregate itself (no server learning rate, no state)."""

    def step(self, sent: Mapping[str, torch.Tensor], aggregate: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.steps += 1
        return dict(aggregate)


@SERVER_OPTIMIZERS.register("fedadam")
class _AdamStep(ServerOptimizer):
    """v <- beta2 v + (1 - beta2) delta^2, with Adam's bias-corrected step size (as Flower's FedAdam)."""

    def _second_moment(self, v: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1 - self.beta2) * square

    def _step_size(self) -> float:
        t = self.steps + 1.0  # Flower's FedAdam counts server rounds from 1 and corrects with round + 1
        return self.lr * math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)


@SERVER_OPTIMIZERS.register("fedyogi")
class _YogiStep(ServerOptimizer):
    """v <- v - (1 - beta2) delta^2 sign(v - delta^2): v grows only as fast as the updates need."""

    def _second_moment(self, v: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.beta2) * square * torch.sign(v - square)


@SERVER_OPTIMIZERS.register("fedadagrad")
class _AdagradStep(ServerOptimizer):
    """v <- v + delta^2: every coordinate's step shrinks with its accumulated updates."""

    def _second_moment(self, v: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
        return v + square
