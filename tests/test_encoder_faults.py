"""A bad encoder at a site (raises, returns NaN or a wrong shape, exceeds the parameter budget,
weights that do not fit) fails that block only, with the site, modality and cause; the site's
other blocks and the federation go on. Budgets are checked before anything is allocated."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from fedlego.cli import main
from fedlego.client import app as client_app
from fedlego.common.config import RunConfig
from fedlego.common.encoders import build_encoder, encoder_parameter_count, register_encoder
from fedlego.inprocess import InProcessTransport
from fedlego.server.orchestrator import Federation

SMALL = {"latent-channels": 8, "latent-dim": 16, "block-epochs": 2, "patience": 2, "block-rounds": 0, "fuse-rounds": 0}
SMALL["min-cell"] = 1  # 40-patient sites: disclosure control would withhold their test figures (see test_disclosure)


class FromExample(nn.Module):
    """Takes its input width from the data."""

    @classmethod
    def infer_kwargs(cls, example, **kwargs):
        return {"in_features": int(example["x"].shape[-1]), **kwargs}


class Exploding(FromExample):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 8)

    def forward(self, x):
        if self.training:
            raise RuntimeError("the encoder exploded")
        return self.linear(x)


class NotANumber(FromExample):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 8)

    def forward(self, x):
        return self.linear(x) * float("nan")


class FourDimensional(FromExample):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 8)

    def forward(self, x):
        return self.linear(x)[:, None, None, :]


class Huge(FromExample):
    def __init__(self, in_features: int, width: int = 100_000) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, width)

    def forward(self, x):
        return self.linear(x)


for name, factory in {"exploding": Exploding, "nan": NotANumber, "four-d": FourDimensional, "huge": Huge}.items():
    register_encoder(name, factory)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("faults")
    args = ["--dataset", "synthetic", "--set", "synthetic-patients=120", "synthetic-modalities=2"]
    assert main(["export-sites", *args, "--out", str(root)]) == 0
    return [root / "paired-0", root / "tabular_0", root / "timeseries_1"]


def run_with_encoder(folders: list[Path], encoder: dict, extra: dict | None = None):
    manifest_path = folders[0] / "site.json"
    original = manifest_path.read_text()
    manifest = json.loads(original)
    manifest["modalities"]["tabular_0"]["encoder"] = encoder
    manifest_path.write_text(json.dumps(manifest))
    client_app._SITES.clear()  # sites are cached per run config; this test rewrites a site.json between runs
    try:
        config = {**SMALL, **(extra or {}), "site-folders": ",".join(str(f) for f in folders)}
        transport = InProcessTransport(config, len(folders))
        return Federation(transport, RunConfig.from_flat(config), log=lambda _: None).run()
    finally:
        manifest_path.write_text(original)


@pytest.mark.parametrize(
    ("encoder", "extra", "cause"),
    [
        ({"name": "exploding"}, {}, "the encoder exploded"),
        ({"name": "nan"}, {}, "non-finite"),
        ({"name": "four-d"}, {}, "returned shape"),
        ({"name": "huge"}, {"max-encoder-parameters": 1_000_000}, "over the budget of 1,000,000"),
        ({"name": "snn", "kwargs": {"in_features": 3}}, {}, "RuntimeError"),
    ],
)
def test_a_bad_encoder_fails_its_block_only(folders, encoder, extra, cause):
    results = run_with_encoder(folders, encoder, extra)
    assert results.status == "completed", results.error
    (failure,) = results.failures
    assert (failure.site, failure.phase) == ("paired-0", "block:tabular_0") and cause in failure.reason
    assert results.merged_modalities == ["tabular_0", "timeseries_1"]  # paired-0's timeseries block and tabular_0's
    assert "block:timeseries_1" in results.metrics["merge"]


def test_the_parameter_budget_is_checked_before_allocating():
    spec = {"name": "huge", "kwargs": {"in_features": 100_000, "width": 1_000_000}, "example": {"x": [100_000]}}
    start = time.perf_counter()
    assert encoder_parameter_count(Huge, spec["kwargs"]) == 100_000 * 1_000_000 + 1_000_000
    with pytest.raises(ValueError, match="100,001,000,000 parameters, over the budget"):
        build_encoder(spec)  # 400 GB if it were allocated
    assert time.perf_counter() - start < 30  # counted, not allocated (a loose bound: this is not a benchmark)
    assert isinstance(build_encoder({**spec, "kwargs": {"in_features": 4, "width": 2}}), Huge)
    with pytest.raises(ValueError, match="cannot build"):
        build_encoder({**spec, "kwargs": {"wings": 2}})


def test_kwargs_with_a_wrong_type_are_refused_by_name():
    with pytest.raises(ValueError, match="kwargs must be an object"):
        build_encoder({"name": "huge", "kwargs": [1, 2], "example": {}})
    assert torch.zeros(1).numel() == 1
