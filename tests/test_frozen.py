"""Pre-trained frozen encoders: weights from safetensors, by reference through the model store,
never changed by block training, block FedAvg, LegoFuse or DP-SGD; refused on a missing file or
another hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedlego.cli import main
from fedlego.common.config import ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from fedlego.common.data.sitefolder import read_site_folder
from fedlego.common.data.tensors import fit_preprocessors, make_tensor_set, task_for
from fedlego.common.encoders import SNN
from fedlego.common.model_store import STORE_ENV, file_sha256, read_weights, save_weights
from fedlego.common.packaging import (
    PackageError,
    block_from_package,
    block_to_package,
    parse_model_package,
    serialize,
)
from fedlego.common.workflow import train_block
from fedlego.inprocess import InProcessTransport
from fedlego.server.orchestrator import Federation

SMALL = {"latent-channels": 8, "latent-dim": 16, "block-epochs": 3, "patience": 2}


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "model-store"
    monkeypatch.setenv(STORE_ENV, str(folder))
    return folder


@pytest.fixture
def sites(tmp_path) -> dict[str, Path]:
    """Synthetic site folders; the two holding the tabular modality use one pre-trained frozen SNN."""
    args = ["--dataset", "synthetic", "--set", "synthetic-patients=150", "synthetic-modalities=2"]
    assert main(["export-sites", *args, "--out", str(tmp_path / "sites")]) == 0
    folders = {p.name: p for p in (tmp_path / "sites").iterdir()}
    data = read_site_folder(folders["tabular_0"])
    width = make_tensor_set(data.dataset, fit_preprocessors(data.dataset, data.roles["train"]), data.roles["train"])
    in_features = width.inputs["tabular_0"]["x"].shape[-1]
    torch.manual_seed(5)
    pretrained = tmp_path / "snn.safetensors"
    save_weights(SNN(in_features, width=16), pretrained)
    for name in ("tabular_0", "paired-0"):
        (folders[name] / "snn.safetensors").write_bytes(pretrained.read_bytes())
        manifest = json.loads((folders[name] / "site.json").read_text())
        manifest["modalities"]["tabular_0"]["encoder"] = {
            "name": "snn", "kwargs": {"in_features": in_features, "width": 16}, "weights": "snn.safetensors",
            "frozen": True,
        }  # fmt: skip
        (folders[name] / "site.json").write_text(json.dumps(manifest))
    return {**folders, "weights": pretrained}


def encoder_state(block) -> dict[str, torch.Tensor]:
    return {k: v for k, v in block.encoder.state_dict().items()}


def assert_unchanged(state: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> None:
    assert set(state) == set(weights)
    for key, value in weights.items():
        assert torch.equal(state[key], value), key  # bit for bit, not approximately


@pytest.mark.parametrize("ship", [False, True])
def test_frozen_weights_survive_block_fedavg_and_fuse_shipped_or_by_reference(sites, tmp_path, store, ship):
    weights = read_weights(sites["weights"])
    for name in ("tabular_0", "paired-0"):
        manifest = json.loads((sites[name] / "site.json").read_text())
        manifest["modalities"]["tabular_0"]["encoder"]["ship_weights"] = ship
        (sites[name] / "site.json").write_text(json.dumps(manifest))
    order = ["paired-0", "tabular_0", "timeseries_1"]
    config = {
        **SMALL, "site-folders": ",".join(str(sites[n]) for n in order), "block-rounds": 2, "block-local-epochs": 2,
        "fuse-rounds": 2, "freeze-encoders": False, "out-dir": str(tmp_path / "run"),
    }  # fmt: skip
    results = Federation(InProcessTransport(config, 3), RunConfig.from_flat(config), log=lambda _: None).run()
    assert results.status == "completed" and not results.refused, results.refused
    assert results.rounds["block:tabular_0"].kept_round >= 0
    merged = parse_model_package((tmp_path / "run" / "packages" / "merged.pb").read_bytes())
    package = next(b for b in merged.blocks if b.modality == "tabular_0")
    architecture = json.loads(package.architecture_json)
    assert architecture["frozen_encoder"] is True
    shipped = any(t.name.startswith("encoder.") for t in package.tensors)
    assert shipped == ship  # by reference: the weights did not travel
    assert architecture.get("encoder_weights_sha256") == (None if ship else file_sha256(sites["weights"]))
    assert_unchanged(encoder_state(block_from_package(package)), weights)  # shipped: after 2 FedAvg rounds
    fused = parse_model_package((tmp_path / "run" / "packages" / "fused.pb").read_bytes())
    assert not any(t.name.startswith("blocks.tabular_0.encoder.") for t in fused.tensors)  # never fine-tuned


def test_block_training_and_dp_sgd_never_change_a_frozen_encoder(sites):
    weights = read_weights(sites["weights"])
    data = read_site_folder(sites["tabular_0"])
    preprocessors = fit_preprocessors(data.dataset, data.roles["train"])
    train = make_tensor_set(data.dataset, preprocessors, data.roles["train"])
    validation = make_tensor_set(data.dataset, preprocessors, data.roles["validation"])
    task = task_for(data.dataset.labels, data.roles["train"])
    model = ModelConfig(latent_channels=8, latent_dim=16)
    for privacy in (None, PrivacyConfig(target_epsilon=8.0)):
        block, _ = train_block(
            "tabular_0", "tabular", train, validation, task, model, TrainConfig(epochs=3, patience=3),
            privacy=privacy, encoder=data.encoders["tabular_0"],
        )  # fmt: skip
        assert block.frozen_encoder and not any(p.requires_grad for p in block.encoder.parameters())
        assert any(p.requires_grad for p in block.updates.parameters())
        assert_unchanged(encoder_state(block), weights)
        block.train()
        assert not block.encoder.training  # dropout off in a frozen encoder


def test_a_missing_or_altered_weights_file_is_refused(sites, store):
    data = read_site_folder(sites["tabular_0"])
    preprocessors = fit_preprocessors(data.dataset, data.roles["train"])
    train = make_tensor_set(data.dataset, preprocessors, data.roles["train"])
    task = task_for(data.dataset.labels, data.roles["train"])
    block, _ = train_block(
        "tabular_0", "tabular", train, train, task, ModelConfig(latent_channels=8, latent_dim=16),
        TrainConfig(epochs=1), encoder=data.encoders["tabular_0"],
    )  # fmt: skip
    package = block_to_package(block, task, site="tabular_0", run_id="r")
    stored = store / f"{block.encoder_weights}.safetensors"
    assert stored.is_file()
    original = stored.read_bytes()
    stored.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(PackageError, match=r"tabular_0.*altered"):
        block_from_package(package)
    stored.unlink()
    with pytest.raises(PackageError, match="not in the model store"):
        block_from_package(package)
    stored.write_bytes(original)
    assert_unchanged(encoder_state(block_from_package(package)), read_weights(sites["weights"]))
    shipped = dict(data.encoders["tabular_0"], ship_weights=True)
    block, _ = train_block(
        "tabular_0", "tabular", train, train, task, ModelConfig(latent_channels=8, latent_dim=16),
        TrainConfig(epochs=1), encoder=shipped,
    )  # fmt: skip
    assert block.encoder_weights is None and len(serialize(block_to_package(block, task, site="s", run_id="r"))) > len(
        serialize(package)
    )


def test_a_pretrained_encoder_made_by_fedlego_pretrain_is_used_frozen_by_a_federation(sites, tmp_path, capsys):
    weights = tmp_path / "pretrained.safetensors"
    assert main(["pretrain", "--data", str(sites["paired-0"]), "--modality", "tabular_0", "--width", "16",
                 "--epochs", "30", "--out", str(weights)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    entry = json.loads(printed.split('"encoder": ', 1)[1].rsplit("}}", 1)[0])
    assert entry["weights"] == str(weights) and entry["frozen"] is True
    for name in ("tabular_0", "paired-0"):
        manifest = json.loads((sites[name] / "site.json").read_text())
        manifest["modalities"]["tabular_0"]["encoder"] = entry
        (sites[name] / "site.json").write_text(json.dumps(manifest))
    order = ["paired-0", "tabular_0", "timeseries_1"]
    config = {**SMALL, "site-folders": ",".join(str(sites[n]) for n in order), "block-rounds": 1, "fuse-rounds": 1,
              "out-dir": str(tmp_path / "run")}  # fmt: skip
    results = Federation(InProcessTransport(config, 3), RunConfig.from_flat(config), log=lambda _: None).run()
    assert results.status == "completed" and not results.refused
    merged = parse_model_package((tmp_path / "run" / "packages" / "merged.pb").read_bytes())
    package = next(b for b in merged.blocks if b.modality == "tabular_0")
    assert json.loads(package.architecture_json)["encoder_weights_sha256"] == file_sha256(weights)
    assert_unchanged(encoder_state(block_from_package(package)), read_weights(weights))
