"""What keeps large cohorts tractable on CPU: a step budget for block training, a cap on visits per
patient, batches cut after their last valid position, and threads per site."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fedlego.common.config import ModelConfig, RunConfig, TrainConfig
from fedlego.common.data.dataset import ModalityData
from fedlego.common.data.preprocess import DEFAULT_MAX_VISITS, TimeSeriesPreprocessor, preprocessor_from_dict
from fedlego.common.data.synthetic import SyntheticModality, make_synthetic
from fedlego.common.data.tensors import cut_padding, fit_preprocessors, make_tensor_set, task_for
from fedlego.common.training import predict
from fedlego.common.workflow import build_block, train_block, unimodal_forward
from fedlego.deploy import DeploymentError, default_threads, site_threads


def test_the_step_budget_leaves_small_cohorts_alone_and_cuts_epochs_of_large_ones():
    config = TrainConfig(epochs=50, patience=10, batch_size=32, max_steps=2000)
    assert config.within_step_budget(350) is config  # 11 batches x 50 epochs = 550 steps
    large = config.within_step_budget(9000)  # 282 batches per epoch
    assert large.epochs == 2000 // 282 == 7
    assert large.patience == 2
    assert large.epochs * 282 <= config.max_steps
    assert config.within_step_budget(3000).patience == 5  # 94 batches: 21 epochs, patience 10 * 21 / 50
    assert TrainConfig(max_steps=0).within_step_budget(10**6).epochs == 50
    assert TrainConfig(max_steps=1).within_step_budget(10**6).epochs == 1  # always at least one epoch


def test_a_negative_step_budget_is_refused_by_name():
    with pytest.raises(ValueError, match="max-steps"):
        RunConfig.from_flat({"max-steps": -1}).validate()


def test_training_on_a_large_cohort_stops_within_the_step_budget():
    cohort = make_synthetic(600, [SyntheticModality("tab", "tabular", 1.0, 0.0, 4)], seed=1)
    ids = cohort.patient_ids()
    preprocessors = fit_preprocessors(cohort, ids[:500])
    train = make_tensor_set(cohort, preprocessors, ids[:500])
    validation = make_tensor_set(cohort, preprocessors, ids[500:])
    config = TrainConfig(epochs=50, patience=50, batch_size=50, max_steps=30)  # 10 batches an epoch
    _, report = train_block(
        "tab", "tabular", train, validation, task_for(cohort.labels, ids[:500]), ModelConfig(), config
    )
    assert len(report.train_loss) == 3


def _series(visits: int) -> ModalityData:
    rows = [("a", float(t), "x", float(t)) for t in range(visits)] + [("b", 5.0, "x", 1.0)]
    return ModalityData(
        "labs", "timeseries", "test", table=pd.DataFrame(rows, columns=["id", "time", "variable", "value"])
    )


def test_a_long_series_keeps_its_most_recent_visits():
    data = _series(200)
    preprocessor = TimeSeriesPreprocessor(max_visits=16).fit(data, ["a", "b"])
    tensors, present = preprocessor.transform(data, ["a", "b"])
    assert present.tolist() == [True, True]
    assert tensors["values"].shape == (2, 16, 1)
    assert tensors["times"][0, -1] * 365.25 == pytest.approx(199.0)  # the latest visit is kept
    assert tensors["times"][0, 0] * 365.25 == pytest.approx(184.0)
    assert tensors["mask"][1].tolist() == [1.0] + [0.0] * 15
    assert TimeSeriesPreprocessor().state["options"]["max_visits"] == DEFAULT_MAX_VISITS


def test_a_package_made_before_the_visit_cap_keeps_every_visit():
    data = _series(100)
    state = TimeSeriesPreprocessor().fit(data, ["a", "b"]).to_dict()
    del state["options"]["max_visits"]
    tensors, _ = preprocessor_from_dict(state).transform(data, ["a"])
    assert tensors["values"].shape[1] == 100


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_a_bad_visit_cap_is_refused(bad):
    with pytest.raises(ValueError, match="max_visits"):
        TimeSeriesPreprocessor(max_visits=bad)


def test_cutting_padding_changes_no_output():
    """A batch cut after its last visit gives the block the same outputs as the padded one."""
    cohort = make_synthetic(
        80, [SyntheticModality("labs", "timeseries", 1.0, 0.0, 3, max_visits=30, observed=0.5)], seed=2
    )
    ids = cohort.patient_ids()
    data = make_tensor_set(cohort, fit_preprocessors(cohort, ids), ids)
    inputs = data.inputs["labs"]
    short = [i for i in range(len(ids)) if inputs["mask"][i].sum() <= 5]
    assert short, "the cohort should hold short series"
    padded = {k: v[short] for k, v in inputs.items()}
    cut = cut_padding(padded)
    assert cut["values"].shape[1] == int(padded["mask"].sum(dim=1).max()) < padded["values"].shape[1]
    block = build_block("labs", "timeseries", padded, task_for(cohort.labels, ids), ModelConfig())
    block.eval()
    with torch.no_grad():
        assert torch.allclose(block(padded), block(cut), atol=1e-5)
    batched = predict(block, data.subset(short), unimodal_forward(block))
    with torch.no_grad():
        assert torch.allclose(batched, block(padded), atol=1e-5)


def test_cut_padding_leaves_unmasked_modalities_and_keeps_one_position():
    table = {"x": torch.ones(3, 4)}
    assert cut_padding(table) is table
    empty = cut_padding({"mask": torch.zeros(2, 5), "x": torch.zeros(2, 5, 3)})
    assert empty["x"].shape == (2, 1, 3)


def test_synthetic_series_can_be_long_and_sparse_and_the_default_is_unchanged():
    plain = SyntheticModality("labs", "timeseries", 1.0, 0.0, 4)
    again = make_synthetic(50, [plain], seed=3).modalities["labs"].table
    default = make_synthetic(50, [SyntheticModality("labs", "timeseries", 1.0, 0.0, 4, max_visits=8)], seed=3)
    pd.testing.assert_frame_equal(again, default.modalities["labs"].table)
    long = SyntheticModality("labs", "timeseries", 1.0, 0.0, 8, max_visits=40, observed=0.1)
    table = make_synthetic(200, [long], seed=3).modalities["labs"].table
    visits = table.groupby("id")["time"].nunique()
    assert visits.max() > 30 and visits.min() >= 1
    per_visit = table.groupby(["id", "time"]).size()
    assert per_visit.min() >= 1 and per_visit.mean() < 2.5  # sparse: about 1 + 8 * 0.1 variables a visit
    with pytest.raises(ValueError, match="observed"):
        SyntheticModality("labs", "timeseries", 1.0, observed=0.0)


def test_site_threads_come_from_the_option_then_the_environment_then_the_default(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert site_threads(3) == 3
    assert site_threads(None) == default_threads()
    assert 1 <= default_threads() <= 4
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert site_threads(None) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert site_threads(None) == default_threads()
    with pytest.raises(DeploymentError, match="threads"):
        site_threads(0)


def test_mostly_short_series_train_fast_in_batches_cut_to_their_length():
    """Every patient but one has 2 visits; that one has 64: batches without it are 2 visits long."""
    rows = [(f"p{i}", float(t), "x", float(np.sin(i + t))) for i in range(40) for t in range(2)]
    rows += [("p0", float(10 + t), "x", 0.0) for t in range(62)]
    data = ModalityData(
        "labs", "timeseries", "test", table=pd.DataFrame(rows, columns=["id", "time", "variable", "value"])
    )
    tensors, _ = (
        TimeSeriesPreprocessor().fit(data, [f"p{i}" for i in range(40)]).transform(data, [f"p{i}" for i in range(40)])
    )
    assert tensors["values"].shape[1] == 64
    assert cut_padding({k: v[1:] for k, v in tensors.items()})["values"].shape[1] == 2
