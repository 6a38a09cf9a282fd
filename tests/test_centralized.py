"""The centralized pipeline end to end on small synthetic data, and the CLI."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from fedlego.cli import main
from fedlego.common.centralized import (
    CentralizedConfig,
    format_table,
    run_centralized,
    run_fold,
    summarise,
    train_fold,
)
from fedlego.common.config import FuseConfig, ModelConfig, TrainConfig
from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.synthetic import SyntheticModality, make_synthetic

MODALITIES = [
    SyntheticModality("omics", "tabular", signal=1.0),
    SyntheticModality("labs", "timeseries", signal=1.0, missing_rate=0.1),
    SyntheticModality("slides", "bags", signal=0.8),
]


def small_config(**overrides) -> CentralizedConfig:
    settings = dict(
        dataset="synthetic",
        modalities=["omics", "labs", "slides"],
        n_folds=2,
        model=ModelConfig(latent_channels=8, latent_dim=16, encoder_width=16, head_dim=8),
        training=TrainConfig(epochs=15, patience=5),
        fuse=FuseConfig(epochs=2),
    )
    settings.update(overrides)
    return CentralizedConfig(**settings)


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(n_patients=160, modalities=MODALITIES, task="survival", seed=1)


@pytest.fixture(scope="module")
def document(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    doc = run_centralized(dataset, small_config(), out, log=lambda _: None)
    assert json.loads((out / "results.json").read_text())["summary"] == doc["summary"]
    return doc


def test_results_document_has_every_model_per_fold(document):
    expected = {"block:omics", "block:labs", "block:slides", "ensemble", "merge", "fuse"}
    assert len(document["folds"]) == 2
    for fold in document["folds"]:
        assert set(fold["models"]) == expected
        assert all(0.0 <= m["metric"] <= 1.0 and m["n"] == fold["n_test"] for m in fold["models"].values())
        assert fold["fuse"]["trainable"] < fold["fuse"]["total"]
    assert set(document["summary"]) == expected
    assert document["config"]["n_folds"] == 2


def test_models_learn_the_synthetic_signal(document):
    summary = document["summary"]
    assert summary["merge"]["mean"] > 0.6
    assert summary["block:omics"]["mean"] > 0.55


def test_test_labels_never_influence_training(dataset):
    """Permuting the outcomes of the test patients leaves every trained block unchanged."""
    config = small_config(n_folds=1)
    split = dataset_splits(dataset, n_folds=1, seed=0)[0]
    first = run_fold(dataset, config, split, log=lambda _: None)
    shuffled = dataset.subset(dataset.patient_ids())
    table = shuffled.labels.table.copy()
    rng = np.random.default_rng(0)
    test_rows = table.index.isin(split.test)
    table.loc[test_rows, ["time", "event"]] = table.loc[test_rows, ["time", "event"]].to_numpy()[
        rng.permutation(test_rows.sum())
    ]
    shuffled.labels.table = table
    second = run_fold(shuffled, config, split, log=lambda _: None)
    for modality in config.modalities:
        assert first["blocks"][modality]["best_epoch"] == second["blocks"][modality]["best_epoch"]
    assert first["fuse"] == second["fuse"]
    assert first["models"]["merge"]["metric"] != second["models"]["merge"]["metric"]


def test_table_is_poster_shaped(document):
    table = format_table(summarise(document["folds"]), "c-index", "title")
    for row in ("LegoBlock (omics)", "Ensemble", "LegoMerge", "Uplift (merge vs best block)", "LegoFuse"):
        assert row in table
    assert "±" in table


def test_unknown_modality_is_a_clear_error(dataset):
    with pytest.raises(ValueError, match="no modalities \\['rna'\\]"):
        run_centralized(dataset, small_config(modalities=["omics", "rna"]), log=lambda _: None)


def test_cli_runs_and_writes_results(tmp_path, capsys):
    code = main(
        [
            "centralized",
            "--dataset",
            "synthetic",
            "--synthetic-patients",
            "120",
            "--synthetic-modalities",
            "2",
            "--folds",
            "1",
            "--epochs",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "LegoMerge" in printed and "wall time" in printed
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["kind"] == "centralized"
    fuse = document["folds"][0]["fuse"]
    assert fuse["budget_from"] in ("inner-cv", "validation")
    tuned = int(fuse["best_epoch"] > 0)
    assert f"LegoFuse kept fine-tuning in {tuned} of 1 folds" in printed


def test_cli_reports_bad_arguments_without_traceback(tmp_path, capsys):
    args = ["centralized", "--dataset", "tcga-acc", "--modalities", "nope", "--folds", "1", "--out", str(tmp_path)]
    code = main(args)
    assert code == 2
    assert "nope" in capsys.readouterr().err


def test_blocks_carry_their_fitted_preprocessing(dataset):
    """A block stores the preprocessor fitted on its training patients; rebuilding it from that
    state reproduces the tensors the block was trained on."""
    import json as json_module

    import torch

    from fedlego.common.data.preprocess import preprocessor_from_dict
    from fedlego.common.data.tensors import fit_preprocessors, make_tensor_set, task_for
    from fedlego.common.workflow import train_block

    split = dataset_splits(dataset, n_folds=1, seed=0)[0]
    fitted = fit_preprocessors(dataset, split.train)
    train = make_tensor_set(dataset, fitted, split.train)
    validation = make_tensor_set(dataset, fitted, split.validation)
    config = small_config()
    block, _ = train_block(
        "omics",
        "tabular",
        train,
        validation,
        task_for(dataset.labels, split.train),
        config.model,
        TrainConfig(epochs=1),
        fitted["omics"].to_dict(),
    )
    state = json_module.loads(json_module.dumps(block.describe()["preprocessing"]))
    rebuilt = preprocessor_from_dict(state)
    expected, _ = fitted["omics"].transform(dataset.modalities["omics"], split.test)
    actual, _ = rebuilt.transform(dataset.modalities["omics"], split.test)
    torch.testing.assert_close(actual["x"], expected["x"])


def test_the_seed_reaches_initialisation_training_and_fuse(dataset):
    """``seed`` seeds every section (as a federation's run config does): two seeds train
    different blocks, and the same seed the same ones."""
    assert {c.seed for c in (small_config(seed=3).model, small_config(seed=3).training, small_config(seed=3).fuse)} == {
        3
    }
    split = dataset_splits(dataset, n_folds=1, seed=0)[0]
    weights = {}
    for seed in (0, 0, 1):
        config = small_config(n_folds=1, training=TrainConfig(epochs=2, patience=2), fuse=FuseConfig(epochs=1))
        fold = train_fold(dataset, replace(config, seed=seed), split, log=lambda _: None)
        weights.setdefault(seed, []).append(next(iter(fold.blocks["omics"].state_dict().values())).clone())
    assert torch.equal(weights[0][0], weights[0][1])
    assert not torch.equal(weights[0][0], weights[1][0])
