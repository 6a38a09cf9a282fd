"""The direct path (``LegoBlock(direct=True)``): the block holds its encoder's plain linear head,
starts as exactly that model, and merging and fusing keep their properties with it."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from fedlego.common.config import ModelConfig
from fedlego.common.encoders import SNN
from fedlego.common.lego import LegoBlock, LegoFuse, LegoMerge, pool_tokens
from fedlego.common.packaging import block_from_package, block_to_package
from fedlego.common.tasks import SurvivalTask
from fedlego.common.workflow import build_block
from tests.test_lego import BATCH, CONTRACT, inputs, make_blocks


def test_a_fresh_direct_block_is_its_encoder_with_a_linear_head():
    x = inputs()
    torch.manual_seed(0)
    block = LegoBlock("slides", make_blocks()["slides"].encoder, CONTRACT, x["slides"], head_dim=8, direct=True).eval()
    tokens, mask = block.tokens(x["slides"])
    torch.testing.assert_close(block(x["slides"]), block.direct(pool_tokens(tokens, mask)))
    assert torch.count_nonzero(block.head.linear.weight) == 0


def test_pooling_ignores_masked_tokens():
    tokens = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert pool_tokens(tokens, torch.tensor([[True, True, False]])).item() == 2.0
    assert pool_tokens(tokens, None).item() == pytest.approx(104 / 3)


def test_training_moves_the_latent_path_off_zero():
    block = make_blocks(direct=True)["omics"]
    assert torch.count_nonzero(block.head.linear.weight) > 0  # make_blocks perturbs every weight
    fresh = LegoBlock("omics", SNN(10, width=12), CONTRACT, inputs()["omics"], direct=True).train()
    targets = {"time": torch.arange(BATCH, dtype=torch.float32), "event": torch.ones(BATCH)}
    SurvivalTask((1.5, 3.5)).loss(fresh(inputs()["omics"]), targets).backward()
    assert fresh.head.linear.weight.grad.abs().sum() > 0


def test_merge_of_one_direct_block_is_that_block():
    block = make_blocks(direct=True)["omics"]
    x = inputs()
    torch.testing.assert_close(LegoMerge([block]).eval()({"omics": x["omics"]}), block(x["omics"]))


def test_merge_of_a_direct_block_with_itself_is_that_block():
    block = make_blocks(direct=True)["omics"]
    twin = LegoBlock("twin", SNN(10, width=12), CONTRACT, inputs()["omics"], head_dim=8, direct=True)
    twin.load_state_dict(block.state_dict())
    twin.eval()
    x = inputs()["omics"]
    merged = LegoMerge({"omics": block, "twin": twin}).eval()
    torch.testing.assert_close(merged({"omics": x, "twin": x}), block(x), rtol=1e-4, atol=1e-5)


def test_the_merged_direct_part_is_the_weighted_mean_of_the_present_blocks():
    blocks = make_blocks(direct=True)
    weights = {"omics": 3.0, "slides": 1.0, "labs": 2.0, "scan": 2.0}
    merged = LegoMerge(blocks, weighting=weights).eval()
    x = inputs()
    present = {"omics": x["omics"], "slides": x["slides"], "labs": None, "scan": None}
    latent = merged.encode(present)
    directs = {m: blocks[m].encode_with_direct(present[m])[1] for m in ("omics", "slides")}
    expected = merged.head(latent) + 0.75 * directs["omics"] + 0.25 * directs["slides"]
    torch.testing.assert_close(merged(present), expected)


def test_direct_merge_is_order_invariant_and_every_direct_head_counts():
    blocks = make_blocks(direct=True)
    x = inputs()
    forward = LegoMerge(list(blocks.values())).eval()(x)
    torch.testing.assert_close(forward, LegoMerge(list(blocks.values())[::-1]).eval()(x))
    for name in blocks:
        perturbed = make_blocks(direct=True)
        with torch.no_grad():
            perturbed[name].direct.bias.add_(1.0)
        assert not torch.allclose(LegoMerge(perturbed).eval()(x), forward, atol=1e-6), name


def test_merge_mode_fuse_of_direct_blocks_is_the_merge_before_any_step():
    blocks = make_blocks(direct=True)
    for score, block in zip((0.8, 0.6, 0.7, 0.55), blocks.values(), strict=True):
        block.validation_score = score
    merged = LegoMerge(blocks, weighting="validation").eval()
    fused = LegoFuse(blocks, "merge", weighting="validation").train()
    x = inputs()
    with torch.no_grad():
        for size in (1, 2, 4):
            for subset in itertools.combinations(blocks, size):
                given = {m: x[m] if m in subset else None for m in blocks}
                torch.testing.assert_close(fused(given), merged(given), msg=f"subset {subset}")
    assert any(name.endswith("direct.weight") for name in fused.fusion_state_dict())


@pytest.mark.parametrize("mode", ["stack", "weave"])
def test_other_fuse_modes_add_the_direct_part(mode):
    blocks = make_blocks(direct=True)
    fused = LegoFuse(blocks, mode).eval()
    x = inputs()
    latent_only = fused.head(fused.encode(x))
    assert not torch.allclose(fused(x), latent_only)


def test_a_direct_block_survives_its_package():
    task = SurvivalTask((1.5, 3.5))
    x = {"x": inputs()["omics"]}
    block = build_block("omics", "tabular", x, task, ModelConfig(latent_channels=8, latent_dim=16, direct=True))
    with torch.no_grad():
        block.head.linear.weight.add_(0.1)
    block.eval()
    rebuilt = block_from_package(block_to_package(block, task, site="a", run_id="r")).eval()
    assert rebuilt.direct is not None and rebuilt.hyperparameters["direct"] is True
    torch.testing.assert_close(rebuilt(x), block(x))


def test_blocks_with_and_without_a_direct_head_do_not_merge():
    mixed = {**make_blocks(direct=True), "scan": make_blocks()["scan"]}
    with pytest.raises(ValueError, match="direct head"):
        LegoMerge(mixed)


def test_the_methods_block_package_does_not_name_the_direct_path():
    """Packages of blocks without a direct head stay readable by versions that predate it."""
    task = SurvivalTask((1.5, 3.5))
    x = {"x": inputs()["omics"]}
    block = build_block("omics", "tabular", x, task, ModelConfig(latent_channels=8, latent_dim=16, direct=False))
    package = block_to_package(block, task, site="a", run_id="r")
    assert "direct" not in json.loads(package.architecture_json)
    assert block_from_package(package).direct is None
