"""Named merge functions for LegoMerge: one small, documented function per method.

Two registries:

- ``LATENT_MERGES`` combine the frequency-domain latents of N blocks, each a complex tensor of
  shape (batch, channels, dim), into one latent of the same shape.
- ``HEAD_MERGES`` combine N tensors of the same shape (one task-head parameter taken from every
  block) into one.

Every function takes a list of N >= 1 tensors and N non-negative weights summing to 1 (see
``normalise_weights``), is invariant to the order of its inputs, and never returns NaN for
identical or all-zero inputs. ``sum`` is the one deliberate exception to ``merge(x, x) == x``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fedlego.common.registry import Registry

LatentMerge = Callable[[Sequence[torch.Tensor], torch.Tensor], torch.Tensor]
HeadMerge = Callable[[Sequence[torch.Tensor], torch.Tensor], torch.Tensor]

LATENT_MERGES: Registry[LatentMerge] = Registry("latent-merge")
HEAD_MERGES: Registry[HeadMerge] = Registry("head-merge")


def normalise_weights(weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Non-negative weights scaled to sum to 1 (uniform when they are all zero)."""
    w = torch.as_tensor(weights, dtype=torch.float64).clamp_min(0.0)
    if w.numel() == 0:
        raise ValueError("cannot merge an empty list of blocks")
    total = w.sum()
    if total <= 0:
        return torch.full_like(w, 1.0 / w.numel())
    return w / total


def _broadcast(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Weights of shape (N,) viewed as (N, 1, ..., 1) in the real dtype matching ``like``."""
    real_dtype = like.real.dtype if like.is_complex() else like.dtype
    return weights.to(device=like.device, dtype=real_dtype).view(-1, *([1] * (like.dim() - 1)))


CANCELLED_PHASORS = 64
"""A weighted sum of unit phasors shorter than this many machine epsilons has no direction: the
blocks' phases cancel (e.g. real components of opposite signs under equal weights)."""


@LATENT_MERGES.register("harmonic")
def harmonic_latent_merge(latents: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Weighted harmonic mean of magnitudes with a weighted circular mean of phases.

    magnitude = 1 / sum_i(w_i / |z_i|); phase = arg(sum_i w_i exp(i arg z_i)).
    The harmonic mean is dominated by the smallest magnitude, so a component is only large when
    every block agrees it is large: this damps interference between modalities (MM-Lego, Hemker et
    al., ICLR 2025). A zero magnitude in any block gives a zero merged component. Phases are
    averaged on the circle (+3 rad and -3 rad average to pi, not 0). Where the weighted unit
    phasors cancel (their sum is shorter than ``CANCELLED_PHASORS`` machine epsilons) there is no
    mean phase and the merged component is 0: the blocks disagree in sign as much as they agree.
    This happens often, not by accident: the DC and Nyquist components of the frequency latents
    are real, and under equal weights an even split of their signs cancels exactly; giving such a
    component the full magnitude would let rounding noise choose its sign. Real inputs are treated
    as complex with zero imaginary part.
    """
    stacked = torch.stack([torch.as_tensor(z) for z in latents])
    if not stacked.is_complex():
        stacked = torch.complex(stacked, torch.zeros_like(stacked))
    w = _broadcast(weights, stacked)
    magnitude = stacked.abs()
    positive = magnitude > 0
    inverse = torch.where(positive, w / torch.where(positive, magnitude, 1.0), torch.inf)
    inverse = torch.where(w > 0, inverse, 0.0)
    merged_magnitude = 1.0 / inverse.sum(dim=0)
    unit = torch.where(positive, stacked / torch.where(positive, magnitude, 1.0), 0)
    resultant = (w * unit).sum(dim=0)
    cancelled = resultant.abs() < CANCELLED_PHASORS * torch.finfo(magnitude.dtype).eps
    merged_magnitude = torch.where(cancelled, 0.0, merged_magnitude)
    return torch.polar(merged_magnitude, torch.angle(resultant))


@LATENT_MERGES.register("mean")
def mean_latent_merge(latents: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Weighted arithmetic mean of the (complex) latents: sum_i w_i z_i."""
    stacked = torch.stack(list(latents))
    return (_broadcast(weights, stacked) * stacked).sum(dim=0)


@LATENT_MERGES.register("sum")
def sum_latent_merge(latents: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Unweighted sum of the latents (weights ignored).

    Not a mean: merging a block with itself doubles its latent. Kept as the reference
    implementation's default for ablations.
    """
    return torch.stack(list(latents)).sum(dim=0)


@HEAD_MERGES.register("linear")
def linear_head_merge(tensors: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Weighted linear interpolation: sum_i w_i theta_i."""
    stacked = torch.stack(list(tensors))
    return (_broadcast(weights, stacked) * stacked).sum(dim=0).to(stacked.dtype)


@HEAD_MERGES.register("slerp")
def slerp_head_merge(
    tensors: Sequence[torch.Tensor],
    weights: torch.Tensor,
    max_iterations: int = 50,
    tolerance: float = 1e-10,
) -> torch.Tensor:
    """Spherical interpolation of N tensors (weighted spherical mean, Buss & Fillmore 2001).

    Each tensor is flattened into a vector theta_i = r_i u_i (norm r_i, direction u_i). The merged
    direction is the weighted Karcher mean of the u_i on the unit sphere, found by fixed-point
    iteration in the tangent space; the merged norm is the weighted mean of the r_i. For N = 2 this
    is exactly slerp(u_1, u_2; t = w_2) rescaled, so weight w_i always means "how much of block i".
    Zero tensors contribute their norm but no direction; if every tensor is zero the result is
    zero. Directions that cancel (antipodal) have no spherical mean: the linear mean is returned.
    """
    stacked = torch.stack(list(tensors)).to(torch.float64)
    shape = stacked.shape[1:]
    vectors = stacked.reshape(stacked.shape[0], -1)
    w = weights.to(torch.float64).to(vectors.device)
    norms = vectors.norm(dim=1)
    merged_norm = (w * norms).sum()
    has_direction = (norms > 0) & (w > 0)
    if not bool(has_direction.any()) or merged_norm == 0:
        return torch.zeros(shape, dtype=stacked.dtype).to(tensors[0].dtype)
    units = vectors[has_direction] / norms[has_direction, None]
    unit_weights = w[has_direction] / w[has_direction].sum()
    mean = (unit_weights[:, None] * units).sum(dim=0)
    if mean.norm() < 1e-12:
        linear = (w[:, None] * vectors).sum(dim=0)
        return linear.reshape(shape).to(tensors[0].dtype)
    direction = mean / mean.norm()
    for _ in range(max_iterations):
        cosines = (units @ direction).clamp(-1.0, 1.0)
        angles = torch.arccos(cosines)
        scale = torch.where(angles > 1e-12, angles / torch.sin(angles), torch.ones_like(angles))
        tangents = scale[:, None] * (units - cosines[:, None] * direction)
        step = (unit_weights[:, None] * tangents).sum(dim=0)
        step_norm = step.norm()
        if step_norm < tolerance:
            break
        direction = torch.cos(step_norm) * direction + torch.sin(step_norm) * step / step_norm
        direction = direction / direction.norm()
    return (merged_norm * direction).reshape(shape).to(tensors[0].dtype)


def merge_latents(
    method: str, latents: Sequence[torch.Tensor], weights: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Merge latents with a registered method; weights are renormalised over the given latents."""
    merge = LATENT_MERGES[method]
    if len(latents) == 1:
        return latents[0]
    return merge(latents, normalise_weights(weights))


def merge_state_dicts(
    method: str, states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | torch.Tensor
) -> dict[str, torch.Tensor]:
    """Merge N state dicts of identical keys and shapes tensor by tensor with a head merge."""
    merge = HEAD_MERGES[method]
    if not states:
        raise ValueError("cannot merge an empty list of heads")
    keys = list(states[0])
    for index, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            raise ValueError(f"head {index} has parameters {list(state)}, expected {keys}")
        for key in keys:
            if state[key].shape != states[0][key].shape:
                raise ValueError(
                    f"head {index} parameter {key!r} has shape {tuple(state[key].shape)}, "
                    f"expected {tuple(states[0][key].shape)}"
                )
    if len(states) == 1:
        return {key: value.detach().clone() for key, value in states[0].items()}
    w = normalise_weights(weights)
    return {key: merge([s[key].detach() for s in states], w) for key in keys}
