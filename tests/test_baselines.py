"""Benchmark baselines: every model fits and scores sensibly on small synthetic cohorts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedlego.common.config import TrainConfig
from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.synthetic import SyntheticModality, make_synthetic
from fedlego.common.data.tensors import TensorSet, fit_preprocessors, make_tensor_set, task_for
from fedlego_bench.baselines import (
    BASELINES,
    BaselineConfig,
    FedAvgBaseline,
    fit_baseline,
    kind_of_tensors,
    site_rows,
)

MIXED = [
    SyntheticModality("omics", "tabular", signal=1.2, missing_rate=0.15, n_features=30),
    SyntheticModality("labs", "timeseries", signal=0.8, missing_rate=0.15, n_features=3),
    SyntheticModality("slides", "bags", signal=0.8, missing_rate=0.15, n_features=6),
    SyntheticModality("scan", "image", signal=0.5, missing_rate=0.15),
]
STRONG = [
    SyntheticModality("clinical", "tabular", signal=2.5, n_features=8),
    SyntheticModality("omics", "tabular", signal=2.5, n_features=40),
]
FAST = TrainConfig(epochs=12, patience=4, batch_size=32)
STRONG_TRAINING = replace(FAST, epochs=40, patience=10)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is faster and immune to oversubscription on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tensor_sets(dataset) -> tuple[TensorSet, TensorSet, TensorSet, object]:
    split = dataset_splits(dataset, n_folds=1, seed=0)[0]
    preprocessors = fit_preprocessors(dataset, split.train)
    task = task_for(dataset.labels, split.train)
    sets = [make_tensor_set(dataset, preprocessors, ids) for ids in (split.train, split.validation, split.test)]
    return sets[0], sets[1], sets[2], task


def config_for(modalities: list[str], **overrides) -> BaselineConfig:
    settings = dict(modalities=modalities, training=FAST, width=16, fedavg_rounds=3, fedavg_local_epochs=1)
    settings.update(overrides)
    return BaselineConfig(**settings)


@pytest.fixture(scope="module", params=["survival", "binary"])
def mixed(request):
    dataset = make_synthetic(120, MIXED, task=request.param, seed=3)
    return tensor_sets(dataset)


@pytest.fixture(scope="module")
def mixed_fits(mixed):
    train, validation, _, task = mixed
    config = config_for([m.name for m in MIXED])
    return {name: fit_baseline(name, train, validation, task, config) for name in BASELINES}


@pytest.fixture(scope="module")
def strong():
    return tensor_sets(make_synthetic(200, STRONG, task="survival", seed=5))


@pytest.fixture(scope="module")
def strong_fits(strong):
    train, validation, _, task = strong
    config = config_for(["clinical", "omics"], training=STRONG_TRAINING, width=32)
    return {
        name: fit_baseline(name, train, validation, task, config) for name in ("cox-early", "cox-late", "early-fusion")
    }


def test_modality_kinds_read_from_tensors(mixed):
    train = mixed[0]
    assert {m: kind_of_tensors(train.inputs[m]) for m in train.inputs} == {
        "omics": "tabular",
        "labs": "timeseries",
        "slides": "bags",
        "scan": "image",
    }


def test_every_baseline_scores_every_patient(mixed, mixed_fits):
    _, _, test, task = mixed
    assert not all(p.all() for p in test.present.values()), "the test set should miss some modalities"
    for name, fitted in mixed_fits.items():
        scores = fitted.scores(test)
        assert fitted.name == name
        assert scores.shape == (len(test),), name
        assert np.isfinite(scores).all(), name
        assert fitted.parameter_count > 0
        if task.kind != "survival":
            assert ((scores >= 0) & (scores <= 1)).all(), name


def test_scores_do_not_depend_on_the_other_patients(mixed, mixed_fits):
    _, _, test, _ = mixed
    rows = np.arange(0, len(test), 3)
    for name, fitted in mixed_fits.items():
        np.testing.assert_allclose(
            fitted.scores(test)[rows], fitted.scores(test.subset(rows)), rtol=1e-5, atol=1e-6, err_msg=name
        )


def test_absent_modality_rows_are_never_read(mixed, mixed_fits):
    """Garbage in the zero-filled rows of absent patients changes no score."""
    _, _, test, _ = mixed
    garbage = TensorSet(
        test.ids,
        {
            m: {k: torch.where(_rows(test.present[m], v), v, torch.full_like(v, 7.0)) for k, v in t.items()}
            for m, t in test.inputs.items()
        },
        test.present,
        test.targets,
    )
    for name, fitted in mixed_fits.items():
        np.testing.assert_allclose(fitted.scores(test), fitted.scores(garbage), rtol=1e-5, atol=1e-6, err_msg=name)


def _rows(present: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return present.view(-1, *([1] * (like.dim() - 1)))


def test_patients_without_any_modality_get_nan(mixed, mixed_fits):
    _, _, test, _ = mixed
    stripped = TensorSet(test.ids, test.inputs, {m: p.clone() for m, p in test.present.items()}, test.targets)
    for p in stripped.present.values():
        p[0] = False
    for name, fitted in mixed_fits.items():
        scores = fitted.scores(stripped)
        assert np.isnan(scores[0]) and np.isfinite(scores[1:]).all(), name


def test_strong_signal_is_learned(strong, strong_fits):
    _, _, test, task = strong
    for name, fitted in strong_fits.items():
        metric = task.metric(fitted.scores(test), test.targets)
        assert metric > 0.65, (name, metric)


def test_strong_signal_classification():
    train, validation, test, task = tensor_sets(make_synthetic(200, STRONG, task="binary", seed=5))
    config = config_for(["clinical", "omics"], training=STRONG_TRAINING, width=32)
    for name in ("cox-early", "early-fusion"):
        metric = task.metric(fit_baseline(name, train, validation, task, config).scores(test), test.targets)
        assert metric > 0.65, (name, metric)


def test_omics_are_compressed_by_pca(strong_fits):
    fitted = strong_fits["cox-early"]
    assert fitted.parameter_count == 8 + 10  # clinical as is, omics as PCA-10
    assert fitted.selection["penalty"] > 0


def test_test_targets_are_never_used(strong, strong_fits):
    """Fitting takes no test set, and scoring reads no target."""
    _, _, test, _ = strong
    permuted = TensorSet(
        test.ids, test.inputs, test.present, {k: v[torch.randperm(len(test))] for k, v in test.targets.items()}
    )
    for fitted in strong_fits.values():
        np.testing.assert_array_equal(fitted.scores(test), fitted.scores(permuted))


def test_deterministic_for_a_seed(mixed, mixed_fits):
    train, validation, test, task = mixed
    config = config_for([m.name for m in MIXED])
    for name in ("late-fusion", "attention-fusion", "fedavg-early-fusion"):
        again = fit_baseline(name, train, validation, task, config).scores(test)
        np.testing.assert_array_equal(mixed_fits[name].scores(test), again)


def test_fedavg_communication_and_sites(mixed, mixed_fits):
    fitted = mixed_fits["fedavg-early-fusion"]
    assert isinstance(fitted, FedAvgBaseline)
    assert fitted.bytes_per_site == 2 * 3 * fitted.parameter_count * 4
    assert 1 <= fitted.selection["best_round"] <= 3
    train = mixed[0]
    rows = np.arange(len(train))
    sites = site_rows(train.targets, rows, 3, seed=0)
    np.testing.assert_array_equal(np.sort(np.concatenate(sites)), rows)
    assert max(map(len, sites)) - min(map(len, sites)) <= 1
    with pytest.raises(ValueError):
        site_rows(train.targets, rows[:2], 3, seed=0)


def test_unknown_baseline_lists_valid_names(mixed):
    train, validation, _, task = mixed
    with pytest.raises(ValueError, match="cox-early"):
        fit_baseline("healnet", train, validation, task, config_for(["omics"]))
    with pytest.raises(ValueError, match="missing"):
        fit_baseline("cox-early", train, validation, task, config_for(["genome"]))
