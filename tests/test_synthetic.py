"""Synthetic cohorts: determinism, shapes, missingness and the planted signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sksurv.metrics import concordance_index_censored

from fedlego.common.data.synthetic import (
    SyntheticModality,
    default_synthetic_modalities,
    make_synthetic,
)


def test_deterministic_for_seed():
    a, b = make_synthetic(80, seed=3), make_synthetic(80, seed=3)
    pd.testing.assert_frame_equal(a.labels.table, b.labels.table)
    pd.testing.assert_frame_equal(a.modalities["tabular_0"].table, b.modalities["tabular_0"].table)
    pd.testing.assert_frame_equal(a.modalities["timeseries_1"].table, b.modalities["timeseries_1"].table)
    for name in ("image_2", "bags_3"):
        assert a.modalities[name].arrays.keys() == b.modalities[name].arrays.keys()
        for pid, array in a.modalities[name].arrays.items():
            np.testing.assert_array_equal(array, b.modalities[name].arrays[pid])
    c = make_synthetic(80, seed=4)
    assert not a.labels.table.equals(c.labels.table)


def test_all_kinds_have_valid_shapes():
    data = make_synthetic(60, default_synthetic_modalities(4), seed=1)
    tab = data.modalities["tabular_0"]
    assert tab.table.index.name == "id" and tab.table.shape[1] == 16
    ts = data.modalities["timeseries_1"].table
    assert list(ts.columns) == ["id", "time", "variable", "value"]
    visits = ts.groupby("id")["time"].nunique()
    assert visits.min() >= 1 and visits.max() <= 8
    assert ts["variable"].nunique() == 4
    for image in data.modalities["image_2"].arrays.values():
        assert image.shape == (16, 16) and image.dtype == np.uint8
    for bag in data.modalities["bags_3"].arrays.values():
        assert bag.ndim == 2 and 2 <= bag.shape[0] <= 12 and bag.shape[1] == 8
    assert data.oracle_score is not None and len(data.oracle_score) == 60
    assert data.labels.table.index.name == "id"


def test_missing_rate_respected_and_nobody_empty():
    specs = [SyntheticModality(f"m{i}", "tabular", 1.0, 0.4, 4) for i in range(3)]
    data = make_synthetic(2000, specs, seed=0)
    for modality in data.modalities.values():
        assert 0.33 < 1 - len(modality.patient_ids()) / 2000 < 0.43
    assert len(data.patient_ids()) == 2000


def test_oracle_score_is_predictive_for_survival():
    data = make_synthetic(500, seed=0)
    labels = data.labels.table
    assert 0.2 < 1 - labels["event"].mean() < 0.4
    assert (labels["time"] > 0).all()
    cindex = concordance_index_censored(
        labels["event"].astype(bool), labels["time"], data.oracle_score.loc[labels.index]
    )[0]
    assert cindex > 0.7


def test_modality_oracle_scores_sum_to_the_oracle_and_rank_by_signal():
    data = make_synthetic(1000, seed=1)
    parts = data.modality_oracle_scores
    assert list(parts.columns) == list(data.modalities)
    np.testing.assert_allclose(parts.sum(axis=1), data.oracle_score.loc[parts.index])
    labels = data.labels.table.loc[parts.index]
    ceilings = [
        concordance_index_censored(labels["event"].astype(bool), labels["time"], parts[m])[0] for m in parts.columns
    ]
    assert all(c > 0.5 for c in ceilings)
    assert ceilings[0] > ceilings[-1]  # signal decreases with the modality's index
    subset = data.subset(list(parts.index[:10]), [parts.columns[1]])
    assert subset.modality_oracle_scores.shape == (10, 1)
    assert make_synthetic(50, task="multiclass", seed=0).modality_oracle_scores is None


def _cv_auc(data, name: str) -> float:
    table = data.modalities[name].table
    y = data.labels.table.loc[table.index, "label"]
    model = LogisticRegression(max_iter=1000)
    return float(cross_val_score(model, table.to_numpy(), y, cv=5, scoring="roc_auc").mean())


def test_signal_zero_is_noise_and_high_signal_is_predictive():
    specs = [
        SyntheticModality("noise", "tabular", 0.0, 0.0, 8),
        SyntheticModality("strong", "tabular", 3.0, 0.0, 8),
    ]
    data = make_synthetic(1500, specs, task="binary", seed=2)
    assert abs(_cv_auc(data, "noise") - 0.5) < 0.06
    assert _cv_auc(data, "strong") > 0.75


def test_multiclass_labels_and_oracle():
    specs = [SyntheticModality("a", "tabular", 2.0), SyntheticModality("b", "bags", 2.0)]
    data = make_synthetic(400, specs, task="multiclass", n_classes=4, seed=0)
    labels = data.labels.table["label"]
    assert set(labels) == {0, 1, 2, 3} and data.labels.n_classes == 4
    oracle = data.oracle_score.loc[labels.index]
    assert oracle[labels == 1].mean() > oracle[labels != 1].mean()


def test_invalid_specs_rejected():
    with pytest.raises(ValueError):
        SyntheticModality("x", "video", 1.0)
    with pytest.raises(ValueError):
        make_synthetic(10, [SyntheticModality("x", "tabular", 1.0)] * 2)
    with pytest.raises(ValueError):
        make_synthetic(10, task="regression")
