"""How the centralized LegoFuse chooses how much fine-tuning to keep: on the validation patients
when they hold enough events, by inner cross-validation on the training patients otherwise, and
never leaving the merge without the stated margin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedlego.common.config import FuseConfig, MergeConfig, ModelConfig, TrainConfig
from fedlego.common.data.synthetic import SyntheticModality, make_synthetic
from fedlego.common.data.tensors import fit_preprocessors, make_tensor_set, task_for
from fedlego.common.lego import LegoMerge
from fedlego.common.training import predict
from fedlego.common.workflow import fuse_blocks, inner_cv_epochs, train_block

MODALITIES = [SyntheticModality("a", "tabular", 1.0), SyntheticModality("b", "tabular", 1.0)]
MODEL = ModelConfig(latent_channels=8, latent_dim=8, encoder_width=16, head_dim=8)


@pytest.fixture(scope="module")
def fold():
    data = make_synthetic(180, MODALITIES, seed=3)
    ids = data.patient_ids()
    train_ids, validation_ids = ids[:140], ids[140:]
    preprocessors = fit_preprocessors(data, train_ids, {})
    task = task_for(data.labels, train_ids)
    train = make_tensor_set(data, preprocessors, train_ids)
    validation = make_tensor_set(data, preprocessors, validation_ids)
    blocks = {
        m: train_block(m, "tabular", train, validation, task, MODEL, TrainConfig(epochs=5, patience=5))[0]
        for m in ("a", "b")
    }
    return blocks, train, validation, task


def _equal_to_the_merge(model, blocks, data) -> bool:
    merged = LegoMerge(blocks, "harmonic", "slerp", "uniform")
    return torch.allclose(predict(model, data), predict(merged, data), atol=1e-5)


def test_few_validation_events_choose_the_budget_by_inner_cv(fold):
    blocks, train, validation, task = fold
    config = FuseConfig(epochs=3, inner_cv_below=10_000)  # every validation set counts as small
    model, report = fuse_blocks(blocks, train, validation, task, config, MergeConfig())
    assert report.inner_cv_loss is not None and len(report.inner_cv_loss) == 4  # after 0..3 epochs
    assert 0 <= report.best_epoch <= 3
    assert report.best_validation_loss == report.inner_cv_loss[report.best_epoch]
    if report.best_epoch == 0:
        assert _equal_to_the_merge(model, blocks, validation)
    else:
        margin = config.min_improvement * abs(report.inner_cv_loss[0])
        assert report.inner_cv_loss[report.best_epoch] < report.inner_cv_loss[0] - margin


def test_enough_validation_events_use_the_validation_patients(fold):
    blocks, train, validation, task = fold
    assert task.events(validation.targets) > 0
    _, report = fuse_blocks(blocks, train, validation, task, FuseConfig(epochs=2, inner_cv_below=0), MergeConfig())
    assert report.inner_cv_loss is None and len(report.validation_loss) == 2


def test_an_unreachable_margin_keeps_the_merge_exactly(fold):
    blocks, train, validation, task = fold
    config = FuseConfig(epochs=2, inner_cv_below=10_000, min_improvement=0.99)
    model, report = fuse_blocks(blocks, train, validation, task, config, MergeConfig())
    assert report.best_epoch == 0
    assert _equal_to_the_merge(model, blocks, validation)


def test_inner_cv_never_touches_the_blocks_and_is_reproducible(fold):
    blocks, train, _, task = fold
    before = {m: {k: v.clone() for k, v in b.state_dict().items()} for m, b in blocks.items()}
    config = FuseConfig(epochs=2, inner_folds=2)
    training = TrainConfig(epochs=2, patience=2, learning_rate=1e-3, keep_initial=True)
    first = inner_cv_epochs(blocks, train, task, config, MergeConfig(), training)
    second = inner_cv_epochs(blocks, train, task, config, MergeConfig(), training)
    assert first == second
    for m, block in blocks.items():
        for key, value in block.state_dict().items():
            assert torch.equal(value, before[m][key]), f"{m}.{key} changed"
    assert np.all(np.isfinite(first[1]))
