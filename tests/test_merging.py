"""Properties of the registered merge functions."""

import math

import pytest
import torch

from fedlego.common.merging import (
    HEAD_MERGES,
    LATENT_MERGES,
    merge_latents,
    merge_state_dicts,
    normalise_weights,
)

IDEMPOTENT_LATENT = [m for m in LATENT_MERGES if m != "sum"]


def complex_latent(seed: int, shape=(3, 4, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))


def test_every_registered_method_is_documented():
    for fn in [*LATENT_MERGES.values(), *HEAD_MERGES.values()]:
        assert fn.__doc__ and len(fn.__doc__) > 40


@pytest.mark.parametrize("method", IDEMPOTENT_LATENT)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_latent_merge_of_copies_is_identity(method, n):
    z = complex_latent(0)
    merged = merge_latents(method, [z] * n, [1.0] * n)
    torch.testing.assert_close(merged, z, rtol=1e-5, atol=1e-6)


def test_sum_merge_is_not_a_mean_and_says_so():
    z = complex_latent(0)
    torch.testing.assert_close(merge_latents("sum", [z, z], [1, 1]), 2 * z)
    assert "Not a mean" in LATENT_MERGES["sum"].__doc__


@pytest.mark.parametrize("method", list(LATENT_MERGES))
def test_latent_merge_is_order_invariant(method):
    zs = [complex_latent(s) for s in range(4)]
    w = [0.1, 0.2, 0.3, 0.4]
    a = merge_latents(method, zs, w)
    b = merge_latents(method, zs[::-1], w[::-1])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", list(LATENT_MERGES))
def test_every_latent_counts(method):
    zs = [complex_latent(s) for s in range(5)]
    base = merge_latents(method, zs, [1] * 5)
    for k in range(5):
        changed = list(zs)
        changed[k] = zs[k] * 1.5 + 0.3
        assert not torch.allclose(merge_latents(method, changed, [1] * 5), base), f"latent {k} ignored"


@pytest.mark.parametrize("method", list(LATENT_MERGES))
def test_latent_merge_no_nan_for_zero_or_identical(method):
    zero = torch.zeros(2, 3, 4, dtype=torch.complex64)
    assert not merge_latents(method, [zero, zero, zero], [1, 1, 1]).isnan().any()
    z = complex_latent(1, shape=(2, 3, 4))
    assert not merge_latents(method, [z, z], [1, 1]).isnan().any()
    assert not merge_latents(method, [z, zero], [1, 1]).isnan().any()


def test_harmonic_phase_is_circular_mean():
    a = torch.polar(torch.ones(1), torch.tensor([3.0]))
    b = torch.polar(torch.ones(1), torch.tensor([-3.0]))
    phase = torch.angle(merge_latents("harmonic", [a, b], [1, 1]))
    assert abs(abs(float(phase)) - math.pi) < 1e-5


def test_harmonic_merge_of_cancelling_phases_is_zero_and_does_not_follow_rounding_noise():
    """Real components of opposite signs under equal weights have no mean phase: the merged
    component is 0 (not the full magnitude with a sign that rounding noise picks); unequal
    weights keep the heavier side's sign."""
    a = torch.tensor([2.0 + 0j, 1.0 + 0j])
    b = torch.tensor([-3.0 + 0j, 1.0 + 0j])
    merged = merge_latents("harmonic", [a, b], [1, 1])
    assert float(merged[0].abs()) == 0.0 and float(merged[1].real) == pytest.approx(1.0)
    assert float(merge_latents("harmonic", [a, b], [0.6, 0.4])[0].real) > 0
    leaves = [a.clone().requires_grad_(), b.clone().requires_grad_()]
    merge_latents("harmonic", leaves, [1, 1]).real.sum().backward()  # fine-tuning passes through it
    assert all(bool(torch.isfinite(torch.view_as_real(x.grad)).all()) for x in leaves)
    g = torch.Generator().manual_seed(0)
    signs = torch.tensor([1.0, 1.0, -1.0, -1.0]).view(4, 1, 1)
    real = [signs[i] * (torch.rand(3, 8, generator=g) + 0.5) for i in range(4)]  # every column splits 2-2
    clean = merge_latents("harmonic", [torch.complex(x, torch.zeros_like(x)) for x in real], [1, 1, 1, 1])
    for trial in range(5):
        noisy = [
            torch.complex(x * (1 + 1e-6 * torch.randn(x.shape, generator=g)), 1e-8 * torch.randn(x.shape, generator=g))
            for x in real
        ]
        assert (merge_latents("harmonic", noisy, [1, 1, 1, 1]) - clean).abs().max() < 1e-5, trial


def test_harmonic_magnitude_is_weighted_harmonic_mean():
    a = torch.polar(torch.tensor([1.0]), torch.tensor([0.5]))
    b = torch.polar(torch.tensor([4.0]), torch.tensor([0.5]))
    merged = merge_latents("harmonic", [a, b], [0.25, 0.75])
    expected = 1.0 / (0.25 / 1.0 + 0.75 / 4.0)
    assert abs(float(merged.abs()) - expected) < 1e-5
    assert abs(float(torch.angle(merged)) - 0.5) < 1e-5


def test_harmonic_zero_magnitude_gives_zero_and_zero_weight_ignores_block():
    a = torch.tensor([2.0 + 0j])
    zero = torch.tensor([0j])
    assert float(merge_latents("harmonic", [a, zero], [1, 1]).abs()) == 0.0
    torch.testing.assert_close(merge_latents("harmonic", [a, zero], [1, 0]), a)


def head_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 6, generator=g), "b": torch.randn(4, generator=g)}


@pytest.mark.parametrize("method", list(HEAD_MERGES))
def test_head_merge_of_copies_is_identity(method):
    s = head_state(0)
    for n in (1, 2, 4):
        merged = merge_state_dicts(method, [s] * n, [1.0] * n)
        for k in s:
            torch.testing.assert_close(merged[k], s[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", list(HEAD_MERGES))
def test_head_merge_is_order_invariant_and_every_head_counts(method):
    states = [head_state(s) for s in range(4)]
    w = [0.4, 0.3, 0.2, 0.1]
    a = merge_state_dicts(method, states, w)
    b = merge_state_dicts(method, states[::-1], w[::-1])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    for i in range(4):
        changed = list(states)
        changed[i] = head_state(100 + i)
        c = merge_state_dicts(method, changed, w)
        assert not torch.allclose(c["w"], a["w"]), f"head {i} ignored"


def test_slerp_matches_classic_two_point_slerp_and_keeps_norm():
    x, y = head_state(1)["w"], head_state(2)["w"]
    t = 0.3
    merged = HEAD_MERGES["slerp"]([x, y], normalise_weights([1 - t, t]))
    u, v = x.flatten().double() / x.norm(), y.flatten().double() / y.norm()
    omega = torch.arccos(u @ v)
    direction = (torch.sin((1 - t) * omega) * u + torch.sin(t * omega) * v) / torch.sin(omega)
    expected = direction * ((1 - t) * x.norm() + t * y.norm())
    torch.testing.assert_close(merged.flatten().double(), expected, rtol=1e-5, atol=1e-6)
    # weight 1 on one head returns that head (alpha means the same thing as for linear)
    torch.testing.assert_close(HEAD_MERGES["slerp"]([x, y], normalise_weights([0, 1])), y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", list(HEAD_MERGES))
def test_head_merge_no_nan_for_zero_identical_or_opposite(method):
    zero = torch.zeros(3, 3)
    ones = torch.ones(3, 3)
    for tensors in ([zero, zero], [ones, ones], [ones, zero], [ones, -ones]):
        merged = HEAD_MERGES[method](tensors, normalise_weights([1] * len(tensors)))
        assert not merged.isnan().any()


def test_head_merge_rejects_mismatched_shapes_with_names():
    with pytest.raises(ValueError, match="'w'"):
        merge_state_dicts("slerp", [head_state(0), {"w": torch.zeros(2, 2), "b": torch.zeros(4)}], [1, 1])


def test_unknown_methods_are_named():
    with pytest.raises(ValueError, match="unknown latent merge"):
        merge_latents("nope", [complex_latent(0)] * 2, [1, 1])
    with pytest.raises(ValueError, match="unknown head merge"):
        merge_state_dicts("nope", [head_state(0)], [1])
