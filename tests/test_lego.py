"""LegoBlock, LegoMerge and LegoFuse: contracts, merge properties, fusion trainability."""

import itertools

import pytest
import torch
from torch import nn

from fedlego.common.encoders import SNN, GatedAttentionMIL, IrregularTimeSeriesEncoder, SmallCNN
from fedlego.common.lego import LatentContract, LegoBlock, LegoFuse, LegoMerge
from fedlego.common.tasks import SurvivalTask

CONTRACT = LatentContract(channels=8, dim=16, n_outputs=3)
BATCH = 6


def inputs(batch: int = BATCH, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 5)
    mask[0, 3:] = 0
    visits = torch.ones(batch, 4)
    visits[1, 2:] = 0
    return {
        "omics": torch.randn(batch, 10, generator=g),
        "slides": {"x": torch.randn(batch, 5, 7, generator=g), "mask": mask},
        "labs": {
            "values": torch.randn(batch, 4, 3, generator=g),
            "observed": torch.ones(batch, 4, 3),
            "times": torch.rand(batch, 4, generator=g).cumsum(1),
            "mask": visits,
        },
        "scan": torch.randn(batch, 1, 16, 16, generator=g),
    }


def make_blocks(
    contract: LatentContract = CONTRACT, frequency: bool = True, seed: int = 0, direct: bool = False
) -> dict[str, LegoBlock]:
    torch.manual_seed(seed)
    x = inputs()
    encoders = {
        "omics": SNN(10, width=12),
        "slides": GatedAttentionMIL(7, width=12),
        "labs": IrregularTimeSeriesEncoder(3, width=12),
        "scan": SmallCNN(1, width=8),
    }
    blocks = {
        m: LegoBlock(m, e, contract, x[m], head_dim=8, frequency=frequency, direct=direct) for m, e in encoders.items()
    }
    for block in blocks.values():  # make the blocks differ like independently trained ones
        with torch.no_grad():
            for p in block.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        block.eval()
    return blocks


class TokensAndMask(nn.Module):
    """A user encoder returning tokens and a mask from a plain tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 9)

    def forward(self, x):
        return self.proj(x), x[..., 0] > -10


def test_block_infers_width_from_any_encoder_and_output_rank():
    x = inputs()
    assert LegoBlock("omics", SNN(10, width=12), CONTRACT, x["omics"]).token_width == 12
    assert LegoBlock("scan", SmallCNN(1, width=8), CONTRACT, x["scan"]).token_width == 8
    block = LegoBlock("user", TokensAndMask(), CONTRACT, torch.randn(2, 5, 4))
    assert block.token_width == 9
    assert block(torch.randn(3, 5, 4)).shape == (3, 3)


def test_encoder_free_block_attends_on_raw_tokens():
    block = LegoBlock("raw", None, CONTRACT, torch.randn(2, 7, 5))
    assert block.encoder_free and block.token_width == 5
    assert block(torch.randn(4, 7, 5)).shape == (4, 3)
    flat = LegoBlock("raw", None, CONTRACT, torch.randn(2, 5))
    assert flat(torch.randn(4, 5)).shape == (4, 3)


def test_token_mask_is_honoured():
    block = make_blocks()["slides"]
    x = inputs()["slides"]
    base = block(x)
    changed = {"x": x["x"].clone(), "mask": x["mask"]}
    changed["x"][0, 3:] += 100.0  # masked instances of bag 0
    torch.testing.assert_close(block(changed)[0], base[0])
    changed["x"][0, 0] += 100.0  # a real instance
    assert not torch.allclose(block(changed)[0], base[0])


def test_frequency_latent_is_complex_and_spatial_is_real():
    x = inputs()
    assert make_blocks(frequency=True)["omics"].encode(x["omics"]).is_complex()
    assert not make_blocks(frequency=False)["omics"].encode(x["omics"]).is_complex()


def test_contract_parts_share_initialisation_across_blocks():
    x = inputs()
    a = LegoBlock("a", SNN(10), CONTRACT, x["omics"])
    b = LegoBlock("b", GatedAttentionMIL(7), CONTRACT, x["slides"])
    torch.testing.assert_close(a.latent, b.latent)
    torch.testing.assert_close(a.head.linear.weight, b.head.linear.weight)


@pytest.mark.parametrize("frequency", [True, False])
def test_merge_of_one_block_is_that_block(frequency):
    block = make_blocks(frequency=frequency)["omics"]
    merged = LegoMerge([block]).eval()
    x = inputs()
    torch.testing.assert_close(merged({"omics": x["omics"]}), block(x["omics"]))


@pytest.mark.parametrize("latent_merge", ["harmonic", "mean"])
@pytest.mark.parametrize("head_merge", ["slerp", "linear"])
def test_merge_of_a_block_with_itself_is_that_block(latent_merge, head_merge):
    block = make_blocks()["omics"]
    twin = LegoBlock("twin", SNN(10, width=12), CONTRACT, inputs()["omics"], head_dim=8)
    twin.load_state_dict(block.state_dict())
    twin.eval()
    x = inputs()["omics"]
    merged = LegoMerge({"omics": block, "twin": twin}, latent_merge, head_merge).eval()
    torch.testing.assert_close(merged({"omics": x, "twin": x}), block(x), rtol=1e-4, atol=1e-5)


def test_merge_is_invariant_to_block_order():
    blocks = make_blocks()
    x = inputs()
    forward = LegoMerge(list(blocks.values())).eval()(x)
    backward = LegoMerge(list(blocks.values())[::-1]).eval()(x)
    torch.testing.assert_close(forward, backward)


@pytest.mark.parametrize("latent_merge", ["harmonic", "mean", "sum"])
def test_every_block_influences_the_merge(latent_merge):
    blocks = make_blocks()
    x = inputs()
    base = LegoMerge(blocks, latent_merge).eval()(x)
    for name in blocks:
        perturbed = make_blocks()
        with torch.no_grad():
            for p in perturbed[name].updates.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        out = LegoMerge(perturbed, latent_merge).eval()(x)
        assert not torch.allclose(out, base, atol=1e-6), f"block {name} has no influence"


def test_merge_handles_any_subset_of_modalities():
    blocks = make_blocks()
    merged = LegoMerge(blocks).eval()
    x = inputs()
    names = list(blocks)
    for size in range(1, len(names) + 1):
        subset = {m: x[m] for m in names[:size]}
        subset.update(dict.fromkeys(names[size:]))  # None = missing
        out = merged(subset)
        assert out.shape == (BATCH, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="none of the model's modalities"):
        merged(dict.fromkeys(names))


def test_merge_no_nan_with_identical_fresh_blocks():
    x = inputs()
    a = LegoBlock("a", SNN(10), CONTRACT, x["omics"])
    b = LegoBlock("b", SNN(10), CONTRACT, x["omics"])
    b.load_state_dict(a.state_dict())
    out = LegoMerge([a, b]).eval()({"a": x["omics"], "b": x["omics"]})
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("latent_merge", ["harmonic", "mean"])
def test_merge_outputs_move_by_rounding_size_when_the_blocks_do(latent_merge):
    """A merge is a continuous function of its blocks: perturbing every block parameter by one
    part in a million moves the merged outputs by about as much, under uniform weights too
    (where the harmonic merge once let rounding noise pick the sign of cancelled components)."""
    x = inputs()
    blocks = make_blocks()
    base = LegoMerge(blocks, latent_merge=latent_merge).eval()(x)
    g = torch.Generator().manual_seed(1)
    for trial in range(3):
        perturbed = make_blocks()
        with torch.no_grad():
            for block in perturbed.values():
                for p in block.parameters():
                    p.mul_(1 + 1e-6 * torch.randn(p.shape, generator=g))
        moved = LegoMerge(perturbed, latent_merge=latent_merge).eval()(x)
        assert (moved - base).abs().max() < 1e-4 * base.abs().max(), trial


def test_merge_rejects_contract_mismatch_naming_the_field():
    x = inputs()
    a = LegoBlock("a", SNN(10), CONTRACT, x["omics"])
    b = LegoBlock("b", SNN(10), LatentContract(channels=4, dim=16, n_outputs=3), x["omics"])
    with pytest.raises(ValueError, match="channels: expected 8, got 4"):
        LegoMerge([a, b])


def test_merge_weighting_schemes():
    blocks = make_blocks()
    scores = {"omics": (10, 0.6), "slides": (20, 0.75), "labs": (30, 0.55), "scan": (40, 0.4)}
    for name, (n, score) in scores.items():
        blocks[name].n_samples, blocks[name].validation_score = n, score
    assert LegoMerge(blocks, weighting="samples").weights == {"labs": 30.0, "omics": 10.0, "scan": 40.0, "slides": 20.0}
    validation = LegoMerge(blocks, weighting="validation").weights
    assert validation["slides"] == pytest.approx(0.25) and validation["labs"] == pytest.approx(0.05)
    assert validation["scan"] == pytest.approx(0.01)  # below chance: floor, never negative
    blocks["labs"].validation_score, blocks["scan"].validation_score = float("nan"), None  # no usable score
    validation = LegoMerge(blocks, weighting="validation").weights
    assert validation["labs"] == pytest.approx(0.01) and validation["scan"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="unknown weighting"):
        LegoMerge(blocks, weighting="magic")


@pytest.mark.parametrize("mode", ["merge", "stack", "weave"])
def test_fuse_trains_every_fusion_parameter_in_place(mode):
    blocks = make_blocks()
    fused = LegoFuse(blocks, mode)
    fused.train()
    before = {name: (id(p), p.detach().clone()) for name, p in fused.named_parameters()}
    optimiser = torch.optim.SGD([p for p in fused.parameters() if p.requires_grad], lr=0.1)
    task = SurvivalTask((1.0, 2.0))
    targets = {"time": torch.rand(BATCH) * 3, "event": torch.ones(BATCH, dtype=torch.long)}
    for _ in range(2):
        optimiser.zero_grad()
        task.loss(fused(inputs()), targets).backward()
        optimiser.step()
    for name, p in fused.named_parameters():
        assert isinstance(p, nn.Parameter) and id(p) == before[name][0], f"{name} was replaced"
        if p.requires_grad:
            assert p.grad is not None, f"{name} received no gradient"
            # attention over the single token of a pooled (SNN, MIL) embedding ignores its queries
            pooled = name.split(".")[1] in ("omics", "slides")
            single_token_query = pooled and (".to_q." in name or ".latent_norm." in name)
            if not single_token_query:
                assert not torch.equal(p.detach(), before[name][1]), f"{name} did not change"
        else:
            torch.testing.assert_close(p.detach(), before[name][1])
    assert all(isinstance(b.latent, nn.Parameter) for b in fused.blocks.values())


def test_fuse_is_parameter_efficient_and_reports_counts():
    blocks = make_blocks()
    frozen = LegoFuse(blocks, freeze_encoders=True)
    full = LegoFuse(blocks, freeze_encoders=False)
    counts, full_counts = frozen.parameter_counts(), full.parameter_counts()
    encoder_params = sum(p.numel() for b in blocks.values() for p in b.encoder.parameters())
    assert counts["total"] == full_counts["total"]
    assert counts["trainable"] == full_counts["trainable"] - encoder_params
    assert not any("encoder" in k for k in frozen.fusion_state_dict())
    assert sum(v.numel() for v in frozen.fusion_state_dict().values()) == counts["trainable"]


@pytest.mark.parametrize("mode", ["merge", "stack", "weave"])
def test_fuse_skips_missing_modalities_and_leaves_merge_blocks_untouched(mode):
    blocks = make_blocks()
    snapshot = {m: {k: v.clone() for k, v in b.state_dict().items()} for m, b in blocks.items()}
    fused = LegoFuse(blocks, mode).eval()
    x = inputs()
    x["slides"] = None
    del x["scan"]
    assert torch.isfinite(fused(x)).all()
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(1.0)
    for m, block in blocks.items():
        for k, v in block.state_dict().items():
            torch.testing.assert_close(v, snapshot[m][k])


def test_fuse_order_must_name_every_block():
    with pytest.raises(ValueError, match="order"):
        LegoFuse(make_blocks(), order=["omics"])


@pytest.mark.parametrize("latent_merge", ["harmonic", "mean", "sum"])
@pytest.mark.parametrize("weighting", ["uniform", "validation"])
def test_merge_mode_fuse_is_the_merge_before_any_step_for_every_subset(latent_merge, weighting):
    blocks = make_blocks()
    for score, block in zip((0.8, 0.6, 0.7, 0.55), blocks.values(), strict=True):
        block.validation_score = score
    merged = LegoMerge(blocks, latent_merge, "slerp", weighting).eval()
    fused = LegoFuse(blocks, "merge", latent_merge=latent_merge, weighting=weighting).train()  # stays in eval
    x = inputs()
    names = list(blocks)
    with torch.no_grad():
        for size in range(1, len(names) + 1):
            for subset in itertools.combinations(names, size):
                given = {m: x[m] if m in subset else None for m in names}
                torch.testing.assert_close(fused(given), merged(given), msg=f"subset {subset}")
    assert float(fused.anchor_penalty()) == 0.0


def test_merge_mode_fuse_has_no_dropout_in_training_and_is_pulled_back_to_the_merge():
    blocks = make_blocks()
    fused = LegoFuse(blocks, "merge", anchor=0.5).train()
    assert not any(module.training for module in fused.modules())
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), fused(x))  # no dropout: two passes agree
        trainable = [p for p in fused.parameters() if p.requires_grad]
        for p in trainable:
            p.add_(0.1)
    penalty = fused.anchor_penalty()
    expected = 0.5 * 0.5 * sum(p.numel() * 0.1**2 for p in trainable)
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-4)
    penalty.backward()
    assert all(float((p.grad - 0.5 * 0.1).abs().max()) < 1e-5 for p in trainable)  # gradient toward the merge
    assert float(LegoFuse(blocks, "stack").anchor_penalty()) == 0.0
    with pytest.raises(ValueError, match="anchor"):
        LegoFuse(blocks, "merge", anchor=-1.0)
