"""Differential privacy: DP-SGD block training, central DP-FedAvg for fuse rounds, the run-config
keys, the in-process federation and the centralized option."""

import json
import math

import pytest
import torch

from fedlego.cli import main
from fedlego.common.aggregation import dp_average_updates
from fedlego.common.centralized import CentralizedConfig, run_centralized
from fedlego.common.config import FuseConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.synthetic import SyntheticModality, make_synthetic
from fedlego.common.data.tensors import fit_preprocessors, make_tensor_set, task_for
from fedlego.common.lego import LegoBlock, LegoMerge
from fedlego.common.packaging import block_from_package, block_to_package, check_block_package
from fedlego.common.privacy import (
    CentralAccountant,
    calibrate_noise,
    central_epsilon,
    default_delta,
    privacy_metrics,
)
from fedlego.common.protocol import BlockRequest
from fedlego.common.tasks import ClassificationTask
from fedlego.common.workflow import train_block
from tests.test_federation import SMALL, run

MODEL = ModelConfig(latent_channels=8, latent_dim=16, encoder_width=16, head_dim=8)
MODALITIES = [SyntheticModality("omics", "tabular", signal=1.0), SyntheticModality("labs", "timeseries", signal=1.0)]


@pytest.fixture(scope="module")
def data():
    dataset = make_synthetic(n_patients=160, modalities=MODALITIES, task="survival", seed=1)
    split = dataset_splits(dataset, n_folds=1, seed=0)[0]
    fitted = fit_preprocessors(dataset, split.train)
    task = task_for(dataset.labels, split.train)
    train = make_tensor_set(dataset, fitted, split.train)
    validation = make_tensor_set(dataset, fitted, split.validation)
    return dataset, fitted, task, train, validation


def dp_block(data, modality="omics", epsilon=3.0, epochs=4, patience=None):
    dataset, fitted, task, train, validation = data
    return train_block(
        modality,
        dataset.modalities[modality].kind,
        train,
        validation,
        task,
        MODEL,
        TrainConfig(epochs=epochs, patience=patience or epochs),
        fitted[modality].to_dict(),
        privacy=PrivacyConfig(target_epsilon=epsilon),
    )


@pytest.fixture(scope="module")
def trained(data):
    return {m.name: dp_block(data, m.name) for m in MODALITIES}


def test_dp_sgd_spends_about_the_target_epsilon(trained):
    for _block, report in trained.values():
        spent = report.privacy
        assert math.isfinite(spent["epsilon"]) and spent["epsilon"] > 0
        assert spent["epsilon"] <= 3.0 * 1.01  # every epoch run: close to the target, never above
        assert spent["epsilon"] >= 3.0 * 0.9
        assert spent["delta"] == 1e-5  # default_delta of ~100 training patients
        assert spent["noise_multiplier"] > 0 and spent["clip"] == 1.0
        assert spent["epochs_run"] == 4
        assert spent["steps"] == 4 * round(1 / spent["sample_rate"])  # Poisson steps actually run


def test_smaller_epsilon_means_more_noise():
    rate, epochs = 0.3, 10
    noises = [calibrate_noise(e, 1e-5, rate, epochs) for e in (10.0, 3.0, 1.0)]
    assert noises[0] < noises[1] < noises[2]


def test_default_delta_stays_well_below_one_over_n():
    assert default_delta(60) == 1e-5
    assert default_delta(300_000) == 1e-6
    assert default_delta(0) == 1e-5


def test_dp_block_is_a_plain_block_that_packages_and_merges(data, trained):
    _, _, task, _, _ = data
    blocks = {}
    for modality, (block, report) in trained.items():
        assert type(block) is LegoBlock
        assert not any(hasattr(p, "grad_sample") for p in block.parameters())
        assert not block._forward_hooks and not block._backward_hooks
        package = block_to_package(block, task, site="s", run_id="r", metrics=privacy_metrics(report))
        assert package.metrics["dp_epsilon"] == pytest.approx(report.privacy["epsilon"])
        assert package.metrics["dp_delta"] == pytest.approx(report.privacy["delta"])
        rebuilt = check_block_package(package, block.contract, task)
        blocks[modality] = block_from_package(package)
        for key, value in block.state_dict().items():
            torch.testing.assert_close(rebuilt.state_dict()[key], value)
    merged = LegoMerge(blocks)
    _, _, _, train, _ = data
    both = train.restrict(list(blocks))
    inputs, _ = both.batch(both.patterns()[tuple(sorted(blocks))][:4], tuple(sorted(blocks)))
    assert torch.isfinite(merged(inputs)).all()


def test_no_privacy_changes_nothing(data):
    _dataset, fitted, task, train, validation = data
    arguments = ("omics", "tabular", train, validation, task, MODEL, TrainConfig(epochs=2), fitted["omics"].to_dict())
    plain, plain_report = train_block(*arguments)
    off, off_report = train_block(*arguments, privacy=None)
    assert plain_report.privacy is None and off_report.privacy is None
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(off.state_dict()[key], value, rtol=0, atol=0)


def test_privacy_config_travels_in_the_block_request():
    config = PrivacyConfig(target_epsilon=2.0, max_grad_norm=0.5)
    for privacy in (config, None):
        request = BlockRequest("run", ClassificationTask(2), ModelConfig(), TrainConfig(), {}, privacy)
        assert BlockRequest.from_payload(request.to_payload()).privacy == privacy


# -- central DP ---------------------------------------------------------------------------------
def test_central_aggregate_clips_each_update_and_averages_unweighted():
    reference = {"a": torch.zeros(3), "b": torch.zeros(2, 2)}
    big = {"a": torch.tensor([100.0, 0.0, 0.0]), "b": torch.zeros(2, 2)}  # norm 100
    small = {"a": torch.zeros(3), "b": torch.full((2, 2), 0.1)}  # norm 0.2
    state, info = dp_average_updates(reference, [big, small], clip=1.0, noise_multiplier=0.0)
    torch.testing.assert_close(state["a"], torch.tensor([0.5, 0.0, 0.0]))  # (clipped 1 + 0) / 2
    torch.testing.assert_close(state["b"], torch.full((2, 2), 0.05))
    assert info["clipped"] == 1 and info["update_norms"][0] == pytest.approx(100.0)
    alone, _ = dp_average_updates(reference, [big], clip=2.0, noise_multiplier=0.0)
    assert float(alone["a"].norm()) == pytest.approx(2.0)


def test_central_aggregate_adds_gaussian_noise_of_sigma_c():
    reference = {"w": torch.zeros(20_000)}
    states = [{"w": torch.zeros(20_000)} for _ in range(4)]
    generator = torch.Generator().manual_seed(0)
    state, _ = dp_average_updates(reference, states, clip=0.5, noise_multiplier=2.0, generator=generator)
    assert float(state["w"].std()) == pytest.approx(2.0 * 0.5 / 4, rel=0.05)  # noise on the sum, then / n


def test_central_accountant_grows_with_rounds_and_shrinks_with_noise():
    assert central_epsilon(1.0, 1) < central_epsilon(1.0, 5) < central_epsilon(1.0, 20)
    assert central_epsilon(2.0, 5) < central_epsilon(1.0, 5)
    assert central_epsilon(1.0, 5, sample_rate=0.5) < central_epsilon(1.0, 5)
    accountant = CentralAccountant(1.0, 1.0, 1e-5)
    assert accountant.epsilon() == 0.0
    accountant.step()
    assert accountant.summary()["rounds"] == 1 and accountant.summary()["epsilon"] > 0


# -- settings, federation, centralized ----------------------------------------------------------
def test_settings_refuse_block_dp_with_block_rounds():
    with pytest.raises(ValueError, match="block-rounds"):
        RunConfig.from_flat({"block-dp-epsilon": 3.0, "block-rounds": 2})
    with pytest.raises(ValueError, match="fuse-dp-clip"):
        RunConfig.from_flat({"fuse-dp-clip": 0.0})
    settings = RunConfig.from_flat({"block-dp-epsilon": 3.0, "block-rounds": 0})
    assert settings.block_privacy() == PrivacyConfig(target_epsilon=3.0, max_grad_norm=1.0)


def test_federation_reports_fuse_and_block_privacy(tmp_path):
    config = {**SMALL, "block-rounds": 0, "block-dp-epsilon": 5.0, "fuse-dp-noise": 1.0, "fuse-dp-clip": 0.5}
    results, _ = run(config, tmp_path)
    assert results["status"] == "completed"
    fuse = results["privacy"]["fuse"]
    assert fuse["rounds"] == SMALL["fuse-rounds"]
    assert math.isfinite(fuse["epsilon"]) and fuse["epsilon"] > 0
    assert fuse["epsilon"] == pytest.approx(central_epsilon(1.0, SMALL["fuse-rounds"], 1e-5))
    assert (fuse["noise_multiplier"], fuse["clip"], fuse["delta"]) == (1.0, 0.5, 1e-5)
    blocks = results["privacy"]["blocks"]
    assert set(blocks) == set(results["merged_modalities"])
    for entry in blocks.values():
        assert 0 < entry["epsilon"] <= 5.0 * 1.01 and entry["delta"] <= 1e-5


def test_federation_without_dp_has_no_privacy_record(tmp_path):
    results, _ = run({**SMALL, "fuse-rounds": 1, "block-rounds": 0}, tmp_path)
    assert results["status"] == "completed" and "privacy" not in results


def test_centralized_records_epsilon_per_block():
    dataset = make_synthetic(n_patients=120, modalities=MODALITIES, task="survival", seed=2)
    config = CentralizedConfig(
        dataset="synthetic",
        modalities=["omics", "labs"],
        n_folds=1,
        model=MODEL,
        training=TrainConfig(epochs=3, patience=3),
        fuse=FuseConfig(epochs=1),
        privacy=PrivacyConfig(target_epsilon=4.0),
    )
    document = run_centralized(dataset, config, log=lambda _: None)
    for report in document["folds"][0]["blocks"].values():
        assert 0 < report["privacy"]["epsilon"] <= 4.0 * 1.01
    assert document["config"]["privacy"]["target_epsilon"] == 4.0


def test_centralized_command_takes_dp_epsilon_with_the_default_block_rounds(tmp_path):
    """`fedlego centralized --dp-epsilon` runs as documented: the pooled pipeline has no block
    FedAvg rounds, so the federated default block-rounds does not refuse it."""
    args = ["centralized", "--dataset", "synthetic", "--synthetic-patients", "120", "--synthetic-modalities", "2"]
    code = main([*args, "--folds", "1", "--epochs", "2", "--dp-epsilon", "8", "--out", str(tmp_path)])
    assert code == 0
    document = json.loads((tmp_path / "results.json").read_text())
    for report in document["folds"][0]["blocks"].values():
        assert 0 < report["privacy"]["epsilon"] <= 8 * 1.01
