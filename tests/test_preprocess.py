"""Preprocessors: fitted on training patients only, JSON state, masks and padding."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fedlego.common.data.dataset import ModalityData
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.preprocess import (
    BagPreprocessor,
    ImagePreprocessor,
    TabularPreprocessor,
    TimeSeriesPreprocessor,
    make_preprocessor,
    preprocessor_from_dict,
)


def tabular() -> ModalityData:
    table = pd.DataFrame(
        {
            "age": [40.0, 60.0, np.nan, 80.0, 1000.0],
            "const": [1.0, 1.0, 1.0, 1.0, 1.0],
            "sex": ["F", "M", "F", None, "X"],
        },
        index=pd.Index(["a", "b", "c", "d", "t"], name="id"),
    )
    return ModalityData("clinical", "tabular", "clinical.csv", table=table)


def timeseries() -> ModalityData:
    table = pd.DataFrame(
        {
            "id": ["a", "a", "a", "a", "b", "t", "t"],
            "time": [365.25, 0.0, 0.0, 365.25, 10.0, 0.0, 5.0],
            "variable": ["alb", "alb", "bili", "bili", "alb", "alb", "new"],
            "value": [3.0, 4.0, 1.0, 3.0, 5.0, 100.0, 7.0],
        }
    )
    return ModalityData("labs", "timeseries", "labs.csv", table=table)


def images() -> ModalityData:
    rng = np.random.default_rng(0)
    arrays = {i: rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for i in ["a", "b", "t"]}
    return ModalityData("xray", "image", "xray", arrays=arrays)


def bags() -> ModalityData:
    rng = np.random.default_rng(1)
    arrays = {i: rng.normal(size=(n, 3)).astype(np.float32) for i, n in [("a", 2), ("b", 4), ("t", 5)]}
    return ModalityData("wsi", "bags", "wsi.npz", arrays=arrays)


CASES = [
    (lambda: TabularPreprocessor(log_transform=["age"]), tabular),
    (TimeSeriesPreprocessor, timeseries),
    (ImagePreprocessor, images),
    (BagPreprocessor, bags),
]
TRAIN = ["a", "b", "c", "d"]
IDS = ["t", "zz", "a", "b"]


def perturb_test_patient(data: ModalityData) -> ModalityData:
    """The same data with test patient 't' changed."""
    if data.kind == "tabular":
        table = data.table.copy()
        table.loc["t"] = [-5.0, 9.0, "Y"]
        return ModalityData(data.name, data.kind, data.source, table=table)
    if data.kind == "timeseries":
        table = data.table.copy()
        table.loc[table["id"] == "t", "value"] = -50.0
        return ModalityData(data.name, data.kind, data.source, table=table)
    arrays = {**data.arrays, "t": np.zeros_like(data.arrays["t"]) + 7}
    return ModalityData(data.name, data.kind, data.source, arrays=arrays)


@pytest.mark.parametrize(("make", "data"), CASES)
def test_fitted_on_train_only(make, data):
    state = make().fit(data(), TRAIN).to_dict()
    assert make().fit(perturb_test_patient(data()), TRAIN).to_dict() == state


@pytest.mark.parametrize(("make", "data"), CASES)
def test_state_round_trip_and_absent_patients(make, data):
    fitted = make().fit(data(), TRAIN)
    state = json.loads(json.dumps(fitted.to_dict()))
    restored = preprocessor_from_dict(state)
    assert type(restored) is type(fitted)
    tensors, present = fitted.transform(data(), IDS)
    again, present_again = restored.transform(data(), IDS)
    assert present.tolist() == present_again.tolist() == [True, False, True, True]
    assert tensors.keys() == again.keys() == fitted.describe().keys()
    for key, tensor in tensors.items():
        assert tensor.dtype == torch.float32 and tensor.shape[0] == len(IDS)
        assert torch.equal(tensor, again[key])
        assert not tensor[1].any(), f"absent patient must be zeros in {key}"
        described = fitted.describe()[key]  # None marks a batch-dependent dimension
        assert len(described) == tensor.dim() - 1
        for size, expected in zip(tensor.shape[1:], described, strict=True):
            assert expected is None or size == expected


def test_unfitted_and_kind_checks():
    with pytest.raises(RuntimeError, match="not fitted"):
        TabularPreprocessor().to_dict()
    with pytest.raises(RuntimeError, match="not fitted"):
        BagPreprocessor().transform(bags(), ["a"])
    state = BagPreprocessor().fit(bags(), TRAIN).to_dict()
    with pytest.raises(ValueError, match="kind"):
        TabularPreprocessor.from_dict(state)
    with pytest.raises(ValueError, match="unknown"):
        preprocessor_from_dict({"kind": "video"})
    with pytest.raises(ValueError, match="unknown"):
        make_preprocessor("video")
    assert isinstance(make_preprocessor("tabular", max_categories=3), TabularPreprocessor)
    with pytest.raises(SiteDataError, match="none of the 1 training patients"):
        BagPreprocessor().fit(bags(), ["nobody"])


# --------------------------------------------------------------------------- tabular


def test_tabular_values():
    fitted = TabularPreprocessor(log_transform=True, max_categories=1).fit(tabular(), TRAIN)
    assert fitted.feature_dim == 3  # age, const, one category
    fit = fitted.to_dict()["fit"]
    assert fit["categorical"] == [{"name": "sex", "categories": ["F"]}]
    age = np.log1p([40.0, 60.0, 80.0])
    assert fit["numeric"]["names"] == ["age", "const"]
    assert fit["numeric"]["median"][0] == pytest.approx(np.median(age))
    assert fit["numeric"]["std"][1] == 1.0
    x = fitted.transform(tabular(), ["c", "d", "t"])[0]["x"]
    filled = np.array([*age[:2], np.median(age), age[2]])
    expected_c = (np.median(age) - filled.mean()) / filled.std()
    assert x[0, 0].item() == pytest.approx(expected_c, rel=1e-5)  # missing -> median
    assert x[:, 1].tolist() == [0.0, 0.0, 0.0]  # constant column
    assert x[:, 2].tolist() == [1.0, 0.0, 0.0]  # F / missing / unknown 'X'


def test_tabular_unknown_category_and_negative_log():
    fitted = TabularPreprocessor(log_transform=["age"]).fit(tabular(), TRAIN)
    assert fitted.describe() == {"x": [2 + 2]}
    assert fitted.to_dict()["fit"]["numeric"]["log"] == [True, False]
    data = tabular()
    data.table.loc["a", "age"] = -3.0
    x = fitted.transform(data, ["a", "t"])[0]["x"]
    numeric = fitted.to_dict()["fit"]["numeric"]
    zero = (0.0 - numeric["mean"][0]) / numeric["std"][0]
    assert x[0, 0].item() == pytest.approx(zero, rel=1e-5)  # log1p(clip(-3, 0)) = 0
    assert x[1, 2:].tolist() == [0.0, 0.0]  # unknown 'X' -> all zeros


def test_tabular_missing_column():
    fitted = TabularPreprocessor().fit(tabular(), TRAIN)
    data = tabular()
    data.table = data.table.drop(columns="sex")
    with pytest.raises(SiteDataError, match=r"clinical\.csv: column 'sex': column missing"):
        fitted.transform(data, TRAIN)


# --------------------------------------------------------------------------- time series


def test_timeseries_padding_and_masks():
    fitted = TimeSeriesPreprocessor().fit(timeseries(), TRAIN)
    state = fitted.to_dict()["fit"]
    assert state["variables"] == ["alb", "bili"]
    assert state["mean"] == [pytest.approx(4.0), pytest.approx(2.0)]
    tensors, present = fitted.transform(timeseries(), ["b", "a", "zz", "t"])
    assert present.tolist() == [True, True, False, True]
    assert tensors["values"].shape == (4, 2, 2)
    assert tensors["mask"].tolist() == [[1, 0], [1, 1], [0, 0], [1, 0]]
    assert tensors["times"][1].tolist() == pytest.approx([0.0, 1.0])
    assert tensors["times"][0, 0].item() == pytest.approx(10 / 365.25)
    # patient a: visit 0 = alb 4, bili 1; visit 1 = alb 3, bili 3 (sorted by time)
    assert tensors["observed"][1].tolist() == [[1, 1], [1, 1]]
    alb_std, bili_std = state["std"]
    assert tensors["values"][1, 0, 0].item() == pytest.approx(0.0)
    assert tensors["values"][1, 1, 1].item() == pytest.approx(1.0 / bili_std, rel=1e-5)
    # patient t: 'new' variable unseen in training is ignored, only one visit kept
    assert tensors["observed"][3].tolist() == [[1, 0], [0, 0]]
    assert tensors["values"][3, 0, 0].item() == pytest.approx((100 - 4) / alb_std, rel=1e-5)
    single = fitted.transform(timeseries(), ["zz"])[0]
    assert single["values"].shape == (1, 1, 2) and not single["mask"].any()


def test_timeseries_duplicates_averaged_and_log():
    data = timeseries()
    data.table.loc[len(data.table)] = ["b", 10.0, "alb", 7.0]
    fitted = TimeSeriesPreprocessor(log_transform=["bili"]).fit(data, TRAIN)
    assert fitted.to_dict()["fit"]["log"] == ["bili"]
    tensors = fitted.transform(data, ["b"])[0]
    assert tensors["mask"].tolist() == [[1.0]]
    fit = fitted.to_dict()["fit"]
    assert tensors["values"][0, 0, 0].item() == pytest.approx((6.0 - fit["mean"][0]) / fit["std"][0], rel=1e-5)


# --------------------------------------------------------------------------- images, bags


def test_image_standardisation_and_shape_check():
    fitted = ImagePreprocessor().fit(images(), TRAIN)
    assert fitted.describe() == {"x": [3, 4, 5]}
    x = fitted.transform(images(), ["a", "b"])[0]["x"]
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert x.std(dim=(0, 2, 3), unbiased=False).sub(1).abs().max() < 1e-4
    grey = ModalityData("g", "image", "g", arrays={"a": np.zeros((2, 2), np.uint8)})
    assert ImagePreprocessor().fit(grey, ["a"]).describe() == {"x": [1, 2, 2]}
    bad = images()
    bad.arrays["t"] = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(SiteDataError, match=r"xray: images differ .* in rows \['t'\]"):
        fitted.transform(bad, ["t"])


def test_bags_padding_and_mask():
    data = bags()
    fitted = BagPreprocessor().fit(data, TRAIN)
    assert fitted.feature_dim == 3 and fitted.describe() == {"x": [None, 3], "mask": [None]}
    tensors, present = fitted.transform(data, ["a", "zz", "b"])
    assert present.tolist() == [True, False, True]
    assert tensors["x"].shape == (3, 4, 3)
    assert tensors["mask"].tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    assert not tensors["x"][0, 2:].any()
    train = torch.cat([tensors["x"][0, :2], tensors["x"][2]])
    assert train.mean(dim=0).abs().max() < 1e-5
    assert fitted.transform(data, ["zz"])[0]["x"].shape == (1, 1, 3)
    bad = bags()
    bad.arrays["t"] = np.zeros((2, 4), np.float32)
    with pytest.raises(SiteDataError, match=r"wsi.npz: bags differ .* in rows \['t'\]"):
        fitted.transform(bad, ["t"])


def test_text_given_for_a_fitted_numeric_column_is_an_error_naming_it():
    """Frames given through the Python API skip the readers: the preprocessor itself refuses text
    in a column it was fitted on as numbers, instead of imputing the training median."""
    train = ModalityData(
        "clin", "tabular", "train.csv", table=pd.DataFrame({"age": [50.0, 61.0, 70.0]}, index=["a", "b", "c"])
    )
    preprocessor = make_preprocessor("tabular").fit(train, ["a", "b", "c"])
    new = pd.DataFrame({"age": [55.0, "unknown", None]}, index=["d", "e", "f"], dtype=object)
    with pytest.raises(SiteDataError, match=r"new\.csv: column 'age': not a number .*'unknown'.* in rows \['e'\]"):
        preprocessor.transform(ModalityData("clin", "tabular", "new.csv", table=new), ["d", "e", "f"])
    tensors, present = preprocessor.transform(
        ModalityData("clin", "tabular", "new.csv", table=new.drop("e")), ["d", "f"]
    )
    assert present.tolist() == [True, True] and torch.isfinite(tensors["x"]).all()  # an empty cell stays missing
