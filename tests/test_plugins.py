"""Encoder plugins: an installed distribution's encoder (the example in plugins/) named in
site.json trains, travels by name and version, merges, evaluates and predicts; a party without
the plugin or with another major version refuses that block and the run goes on without it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedlego.cli import main
from fedlego.common import encoders
from fedlego.common.config import RunConfig
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.sitefolder import read_site_folder
from fedlego.common.encoders import build_encoder, encoder_spec, example_input
from fedlego.common.packaging import PackageError, block_from_package, parse_model_package
from fedlego.inprocess import InProcessTransport
from fedlego.server.orchestrator import Federation

PLUGIN = "tabular-transformer"
DISTRIBUTION = "fedlego-tabular-transformer"
SMALL = {"latent-channels": 8, "latent-dim": 16, "block-epochs": 3, "patience": 2, "block-rounds": 0, "fuse-rounds": 1}
SMALL["min-cell"] = 1  # sites of 40 patients: disclosure control would withhold their test figures


def name_encoder(folder: Path, modality: str, encoder: dict) -> None:
    manifest = json.loads((folder / "site.json").read_text())
    manifest["modalities"][modality]["encoder"] = encoder
    (folder / "site.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> list[Path]:
    """Synthetic site folders (tabular_0, timeseries_1, paired-0) whose tabular modality uses the plugin."""
    root = tmp_path_factory.mktemp("plugin")
    args = ["--dataset", "synthetic", "--set", "synthetic-patients=150", "synthetic-modalities=2"]
    assert main(["export-sites", *args, "--out", str(root)]) == 0
    chosen = [root / "paired-0", root / "tabular_0", root / "timeseries_1"]
    for folder in chosen[:2]:
        name_encoder(folder, "tabular_0", {"name": PLUGIN, "kwargs": {"width": 16, "depth": 1, "heads": 2}})
    return chosen


def federate(folders: list[Path], transport_type=InProcessTransport, out: Path | None = None):
    config = {**SMALL, "site-folders": ",".join(str(f) for f in folders)}
    if out is not None:
        config["out-dir"] = str(out)
    return Federation(transport_type(config, len(folders)), RunConfig.from_flat(config), log=lambda _: None).run()


def test_the_example_plugin_is_installed_through_its_entry_point():
    encoders.load_plugins()
    assert encoders.PLUGINS[PLUGIN].distribution == DISTRIBUTION and PLUGIN not in encoders.PLUGIN_ERRORS


def test_a_federation_with_a_plugin_encoder_trains_merges_and_predicts(folders, tmp_path):
    out = tmp_path / "run"
    results = federate(folders, out=out)
    assert results.status == "completed" and not results.refused and not results.failures, (
        results.error,
        results.failures,
    )
    merged = parse_model_package((out / "packages" / "merged.pb").read_bytes())
    block = next(b for b in merged.blocks if b.modality == "tabular_0")
    spec = json.loads(block.architecture_json)["encoder"]
    assert spec["name"] == PLUGIN and spec["plugin"]["distribution"] == DISTRIBUTION
    assert spec["kwargs"]["width"] == 16 and spec["kwargs"]["in_features"] > 0
    assert "block:tabular_0" in results.metrics["merge"] and "fuse" in results.metrics
    predictions = tmp_path / "predictions.csv"
    code = main(["predict", "--model", str(out / "packages" / "merged.pb"), "--data", str(folders[0]),
                 "--out", str(predictions), "--unverified"])  # fmt: skip
    assert code == 0
    frame = pd.read_csv(predictions)
    assert len(frame) > 0 and frame["risk"].notna().all()


class PluginLostAtTheCoordinator(InProcessTransport):
    """The coordinator lacks the plugin: it is unregistered once the sites have trained their blocks."""

    def exchange(self, message_type, requests, timeout, waiting=None, received=None):
        replies = super().exchange(message_type, requests, timeout, waiting)  # altered after the fact: no arrivals
        if message_type == "train.block":
            del encoders.ENCODER_FACTORIES[PLUGIN], encoders.PLUGINS[PLUGIN]
        return replies


def test_a_coordinator_without_the_plugin_refuses_those_blocks_and_merges_the_rest(folders):
    installed = encoders.ENCODER_FACTORIES[PLUGIN], encoders.PLUGINS[PLUGIN]
    try:
        results = federate(folders, PluginLostAtTheCoordinator)
    finally:
        encoders.ENCODER_FACTORIES[PLUGIN], encoders.PLUGINS[PLUGIN] = installed
    refused = results.refused
    assert {(r.site, r.modality) for r in refused} == {("paired-0", "tabular_0"), ("tabular_0", "tabular_0")}
    assert all(DISTRIBUTION in r.reason and "not installed here" in r.reason for r in refused)
    assert results.merged_modalities == ["timeseries_1"]
    # the run lacks a modality a site declared: on record as incomplete, not completed
    assert results.status == "incomplete" and "modality tabular_0: no block of it entered the merge" in results.gaps


def test_another_major_version_or_a_missing_plugin_is_refused_by_name(folders, tmp_path):
    out = tmp_path / "run"
    federate(folders[1:2], out=out)
    package = parse_model_package((out / "packages" / "merged.pb").read_bytes()).blocks[0]
    architecture = json.loads(package.architecture_json)
    for plugin, message in (
        ({"distribution": DISTRIBUTION, "version": "2.0.0"}, "major versions differ"),
        ({"distribution": "someone-elses-encoders", "version": "1.0.0"}, "comes from plugin 'someone-elses-encoders'"),
    ):
        architecture["encoder"]["plugin"] = plugin
        package.architecture_json = json.dumps(architecture)
        with pytest.raises(PackageError, match=message):
            block_from_package(package)


def test_site_json_naming_an_unknown_encoder_or_bad_kwargs_is_refused(folders, tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    for file in folders[1].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    name_encoder(folder, "tabular_0", {"name": "no-such-encoder"})
    with pytest.raises(SiteDataError, match=r"modalities.tabular_0.encoder.name.*unknown encoder 'no-such-encoder'"):
        read_site_folder(folder)
    name_encoder(folder, "tabular_0", {"name": PLUGIN, "kwargs": [1, 2]})
    with pytest.raises(SiteDataError, match="kwargs' must be an object"):
        read_site_folder(folder)


def test_integer_inputs_keep_their_dtype_in_the_example_a_block_is_rebuilt_from():
    class TokenEmbedding(torch.nn.Module):
        def __init__(self, vocabulary: int = 50, width: int = 8) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocabulary, width)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.embed(ids)

    encoders.register_encoder("token-embedding", TokenEmbedding)
    spec = encoder_spec("token-embedding", {"vocabulary": 50}, {"ids": torch.randint(0, 50, (4, 12))})
    assert spec["example"] == {"ids": {"shape": [12], "dtype": "int64"}} and "plugin" not in spec
    example = example_input(spec)
    assert example["ids"].dtype == torch.int64
    assert build_encoder(spec)(**example).shape == (2, 12, 8)
    with pytest.raises(ValueError, match="dtype 'object'"):
        example_input({**spec, "example": {"ids": {"shape": [12], "dtype": "object"}}})
