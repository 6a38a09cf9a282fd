"""Site file formats: good files round-trip, every bad file gives a precise SiteDataError."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fedlego.common.data.dataset import Labels, ModalityData, MultimodalDataset
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.formats import (
    read_bags,
    read_images,
    read_labels,
    read_modality,
    read_tabular,
    read_timeseries,
    validate_dataset,
)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def raises(match: str, file: Path | str, column: str | None = None, rows: list | None = None):
    """Context manager checking the error names the file, column and rows."""

    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(SiteDataError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            error = self.info.value
            assert Path(error.file).name == Path(file).name
            assert Path(file).name in str(error)
            if column is not None:
                assert error.column == column
                assert f"column '{column}'" in str(error)
            if rows is not None:
                assert error.rows == rows
                assert f"rows {rows}" in str(error)
            return handled

    return Check()


# --------------------------------------------------------------------------- errors


def test_site_data_error_message_and_pickle():
    error = SiteDataError("clinical.csv", "non-numeric values ('abc')", "age", [3, 7])
    assert str(error) == "clinical.csv: column 'age': non-numeric values ('abc') in rows [3, 7]"
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.file, copy.column, copy.rows, str(copy)) == (
        "clinical.csv",
        "age",
        [3, 7],
        str(error),
    )
    long = SiteDataError("f.csv", "bad", rows=list(range(25)))
    assert "(25 in all)" in str(long)
    assert str(SiteDataError("f.csv", "file is empty")) == "f.csv: file is empty"


# --------------------------------------------------------------------------- tabular


def test_tabular_csv_round_trip(tmp_path):
    path = write_csv(
        tmp_path / "clinical.csv",
        "id,age,sex,stage\n001,50,F,I\n002,,M,II\n003,71.5,,1\n",
    )
    data = read_tabular(path, "clinical")
    assert data.kind == "tabular" and data.name == "clinical" and data.source == str(path)
    assert data.table.index.name == "id"
    assert data.patient_ids() == ["001", "002", "003"]
    assert data.table["age"].dtype == float
    assert np.isnan(data.table.loc["002", "age"])
    assert data.table.loc["003", "stage"] == "1"
    assert pd.isna(data.table.loc["003", "sex"])


def test_tabular_parquet_gzip_and_id_column(tmp_path):
    frame = pd.DataFrame({"patient": ["a", "b"], "x": [1.0, 2.0], "flag": [True, False]})
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    frame.to_csv(tmp_path / "t.csv.gz", index=False)
    for name in ("t.parquet", "t.csv.gz"):
        data = read_tabular(tmp_path / name, "t", id_column="patient")
        assert data.patient_ids() == ["a", "b"]
        assert data.table["flag"].tolist() == [1.0, 0.0]


def test_tabular_mostly_numeric_text_reports_rows(tmp_path):
    rows = "\n".join(f"p{i},{i}" for i in range(12))
    path = write_csv(tmp_path / "clinical.csv", f"id,age\n{rows}\np12,abc\n")
    with raises("non-numeric values", path, "age", ["p12"]):
        read_tabular(path, "clinical")


def test_tabular_mostly_text_is_categorical(tmp_path):
    path = write_csv(tmp_path / "c.csv", "id,grade\na,low\nb,high\nc,3\n")
    assert read_tabular(path, "c").table["grade"].tolist() == ["low", "high", "3"]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("clinical.csv", "", "file is empty"),
        ("clinical.csv", "id,age\n", "no data rows"),
        ("clinical.xlsx", "id,age\n1,2\n", "unsupported file type"),
        ("clinical.parquet", "not parquet at all", "cannot be read"),
        ("clinical.csv", "id\na\nb\n", "no feature columns"),
    ],
)
def test_tabular_file_errors(tmp_path, name, content, match):
    path = write_csv(tmp_path / name, content)
    with raises(match, path):
        read_tabular(path, "clinical")


def test_tabular_missing_file(tmp_path):
    with raises("not found", tmp_path / "clinical.csv"):
        read_tabular(tmp_path / "clinical.csv", "clinical")


def test_tabular_id_errors(tmp_path):
    path = write_csv(tmp_path / "clinical.csv", "patient,age\na,1\n")
    with raises("id column missing", path, "id"):
        read_tabular(path, "clinical")
    path = write_csv(tmp_path / "clinical.csv", "id,age\na,1\nb,2\na,3\nb,4\nc,5\n")
    with raises("duplicate patient ids", path, "id", ["a", "b"]):
        read_tabular(path, "clinical")
    path = write_csv(tmp_path / "clinical.csv", "id,age\na,1\n,2\nc,3\n")
    with raises("missing patient ids", path, "id", [2]):
        read_tabular(path, "clinical")


def test_tabular_infinite_values(tmp_path):
    path = write_csv(tmp_path / "clinical.csv", "id,age\na,1\nb,inf\nc,-inf\n")
    with raises("non-finite", path, "age", ["b", "c"]):
        read_tabular(path, "clinical")


# --------------------------------------------------------------------------- time series


def test_timeseries_round_trip_drops_missing_values(tmp_path):
    path = write_csv(
        tmp_path / "labs.csv",
        "id,time,variable,value\n1,0,alb,3.5\n1,30,alb,\n1,30,bili,1.2\n2,0,alb,4\n",
    )
    data = read_timeseries(path, "labs")
    assert data.kind == "timeseries"
    assert list(data.table.columns) == ["id", "time", "variable", "value"]
    assert len(data.table) == 3
    assert data.patient_ids() == ["1", "2"]
    assert data.table["time"].dtype == float


@pytest.mark.parametrize(
    ("content", "match", "column", "rows"),
    [
        ("id,time,value\n1,0,3\n", "required column missing", "variable", None),
        ("id,time,variable,value\n1,0,a,1\n1,x,a,2\n", "non-numeric", "time", [2]),
        ("id,time,variable,value\n1,0,a,1\n1,,a,2\n", "missing values", "time", [2]),
        ("id,time,variable,value\n1,0,a,1\n1,1,a,high\n", "non-numeric", "value", [2]),
        ("id,time,variable,value\n1,0,a,1\n1,1,a,inf\n", "non-finite", "value", [2]),
        ("id,time,variable,value\n1,0,a,1\n1,1,,2\n", "missing variable names", "variable", [2]),
        ("id,time,variable,value\n1,0,a,\n", "no observed values", "value", None),
    ],
)
def test_timeseries_errors(tmp_path, content, match, column, rows):
    path = write_csv(tmp_path / "labs.csv", content)
    with raises(match, path, column, rows):
        read_timeseries(path, "labs")


# --------------------------------------------------------------------------- images


def write_image_folder(folder: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for patient, shape in shapes.items():
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{patient}.png")
    frame = pd.DataFrame({"id": list(shapes), "path": [f"{p}.png" for p in shapes]})
    frame.to_csv(folder / "index.csv", index=False)
    return folder


def test_images_folder_round_trip(tmp_path):
    folder = write_image_folder(tmp_path / "xray", {"a": (4, 5, 3), "b": (4, 5, 3)})
    data = read_images(folder, "xray")
    assert data.kind == "image" and data.patient_ids() == ["a", "b"]
    assert data.arrays["a"].shape == (4, 5, 3) and data.arrays["a"].dtype == np.uint8
    expected = np.asarray(Image.open(folder / "a.png"))
    np.testing.assert_array_equal(data.arrays["a"], expected)
    grey = write_image_folder(tmp_path / "grey", {"a": (6, 6)})
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(grey / "a.jpg")
    pd.DataFrame({"id": ["a"], "path": ["a.jpg"]}).to_csv(grey / "index.csv", index=False)
    assert read_modality(grey, "grey", "image").arrays["a"].shape == (6, 6)


def test_images_folder_errors(tmp_path):
    folder = write_image_folder(tmp_path / "xray", {"a": (4, 4), "b": (4, 4), "c": (5, 4)})
    index = folder / "index.csv"
    with raises("image shapes differ", index, rows=["c"]):
        read_images(folder, "xray")
    (folder / "b.png").unlink()
    with raises("image files not found", index, "path", ["b"]):
        read_images(folder, "xray")
    (folder / "b.png").write_bytes(b"not a png")
    with raises("cannot be read as PNG/JPEG", index, "path", ["b"]):
        read_images(folder, "xray")
    index.write_text("id,file\na,a.png\n")
    with raises("required column missing", index, "path"):
        read_images(folder, "xray")
    index.unlink()
    with raises("file not found", index):
        read_images(folder, "xray")
    with raises("not found", tmp_path / "nothing.npz"):
        read_images(tmp_path / "nothing.npz", "xray")
    with raises("expected a folder or a .npz file", index.with_suffix(".txt")):
        index.with_suffix(".txt").write_text("x")
        read_images(index.with_suffix(".txt"), "xray")


def test_images_npz(tmp_path):
    path = tmp_path / "images.npz"
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.savez(path, ids=np.array(["a", "b"]), images=images)
    data = read_images(path, "img")
    np.testing.assert_array_equal(data.arrays["b"], images[1])
    np.savez(path, ids=np.array(["a", "b"]), pictures=images)
    with raises("array 'images' missing", path):
        read_images(path, "img")
    np.savez(path, ids=np.array(["a", "b"]), images=images[:, 0])
    with raises(r"expected 'ids' \(N,\)", path):
        read_images(path, "img")
    np.savez(path, ids=np.array(["a", "b"]), images=images.astype(np.float32))
    with raises("must be uint8", path):
        read_images(path, "img")
    np.savez(path, ids=np.array(["a", "a"]), images=images)
    with raises("duplicate patient ids", path, rows=["a"]):
        read_images(path, "img")
    path.write_bytes(b"garbage")
    with raises("cannot be read", path):
        read_images(path, "img")


# --------------------------------------------------------------------------- bags


def test_bags_npz_and_folder_round_trip(tmp_path):
    bags = {"a": np.ones((3, 4)), "b": np.zeros((1, 4), dtype=np.float32)}
    np.savez(tmp_path / "wsi.npz", **bags)
    folder = tmp_path / "wsi"
    folder.mkdir()
    for patient, bag in bags.items():
        np.save(folder / f"{patient}.npy", bag)
    for source in (tmp_path / "wsi.npz", folder):
        data = read_bags(source, "wsi")
        assert data.kind == "bags" and data.patient_ids() == ["a", "b"]
        assert data.arrays["a"].shape == (3, 4) and data.arrays["a"].dtype == np.float32


@pytest.mark.parametrize(
    ("bags", "match", "rows"),
    [
        ({"a": np.ones((3, 4)), "b": np.ones(4)}, "2-D", ["b"]),
        ({"a": np.ones((3, 4)), "b": np.ones((0, 4))}, "non-empty", ["b"]),
        (
            {"a": np.ones((3, 4)), "b": np.ones((2, 4)), "c": np.ones((2, 5))},
            "feature count",
            ["c"],
        ),
        ({"a": np.array([[1.0, np.inf]])}, "non-finite", ["a"]),
        ({"a": np.array([["x", "y"]])}, "must hold numbers", ["a"]),
    ],
)
def test_bags_errors(tmp_path, bags, match, rows):
    path = tmp_path / "wsi.npz"
    np.savez(path, **bags)
    with raises(match, path, rows=rows):
        read_bags(path, "wsi")


def test_bags_folder_errors(tmp_path):
    folder = tmp_path / "wsi"
    folder.mkdir()
    with raises("no <id>.npy files", folder):
        read_bags(folder, "wsi")
    (folder / "a.npy").write_bytes(b"garbage")
    with raises("unreadable .npy files", folder, rows=["a"]):
        read_bags(folder, "wsi")
    np.savez(tmp_path / "empty.npz")
    with raises("no bags", tmp_path / "empty.npz"):
        read_bags(tmp_path / "empty.npz", "wsi")


# --------------------------------------------------------------------------- labels


def test_labels_round_trip(tmp_path):
    path = write_csv(tmp_path / "labels.csv", "id,time,event,extra\na,10.5,1,x\nb,3,0,y\n")
    labels = read_labels(path, "survival")
    assert labels.task == "survival" and labels.source == str(path)
    assert list(labels.table.columns) == ["time", "event"]
    assert labels.table["event"].tolist() == [1, 0]
    assert labels.n_classes == 0
    path = write_csv(tmp_path / "y.csv", "id,label\na,0\nb,2\nc,1.0\n")
    labels = read_labels(path, "multiclass")
    assert labels.table["label"].tolist() == [0, 2, 1] and labels.n_classes == 3
    assert read_labels(write_csv(tmp_path / "b.csv", "id,label\na,0\nb,1\n"), "binary").n_classes == 2


@pytest.mark.parametrize(
    ("task", "content", "match", "column", "rows"),
    [
        ("survival", "id,time\na,1\n", "required column missing", "event", None),
        ("survival", "id,days,status\na,1,0\n", "required column missing", "time, event", None),
        ("binary", "id,y\na,1\n", "required column missing", "label", None),
        ("survival", "id,time,event\na,1,0\nb,0,1\nc,-2,1\n", "must be > 0", "time", ["b", "c"]),
        ("survival", "id,time,event\na,1,0\nb,2,2\n", "event must be 0 or 1", "event", ["b"]),
        ("survival", "id,time,event\na,1,0\nb,,1\n", "missing values", "time", ["b"]),
        ("survival", "id,time,event\na,1,0\nb,inf,1\n", "non-finite", "time", ["b"]),
        ("survival", "id,time,event\na,1,yes\n", "non-numeric", "event", ["a"]),
        ("binary", "id,label\na,1\nb,2\nc,0\n", "must be 0 or 1", "label", ["b"]),
        ("binary", "id,label\na,1\nb,\n", "missing values", "label", ["b"]),
        ("multiclass", "id,label\na,1\nb,-1\nc,1.5\n", "integers >= 0", "label", ["b", "c"]),
        ("multiclass", "id,label\na,cat\n", "non-numeric", "label", ["a"]),
        ("binary", "id,label\na,1\na,0\n", "duplicate patient ids", "id", ["a"]),
    ],
)
def test_labels_errors(tmp_path, task, content, match, column, rows):
    path = write_csv(tmp_path / "labels.csv", content)
    with raises(match, path, column, rows):
        read_labels(path, task)


def test_unknown_task_and_kind(tmp_path):
    path = write_csv(tmp_path / "labels.csv", "id,label\na,1\n")
    with pytest.raises(ValueError, match="unknown task"):
        read_labels(path, "regression")
    with pytest.raises(ValueError, match="unknown modality kind"):
        read_modality(path, "x", "video")


# --------------------------------------------------------------------------- dataset


def make_dataset(label_ids: list[str], modality_ids: list[str]) -> MultimodalDataset:
    labels = Labels("binary", pd.DataFrame({"label": [0] * len(label_ids)}, index=label_ids), "y.csv")
    table = pd.DataFrame({"x": [1.0] * len(modality_ids)}, index=modality_ids)
    modality = ModalityData("clinical", "tabular", "clinical.csv", table=table)
    return MultimodalDataset("site", labels, {"clinical": modality})


def test_validate_dataset(tmp_path):
    validate_dataset(make_dataset(["a", "b", "c"], ["b", "c", "d"]))
    with raises("shares no patient id with the labels file y.csv", "clinical.csv"):
        validate_dataset(make_dataset(["1", "2"], ["001", "002"]))
    empty = make_dataset(["a"], ["a"])
    empty.modalities = {}
    with raises("no modality", "y.csv"):
        validate_dataset(empty)


def test_read_modality_dispatch(tmp_path):
    path = write_csv(tmp_path / "labs.csv", "id,time,variable,value\n1,0,a,1\n")
    assert read_modality(path, "labs", "timeseries").kind == "timeseries"
    path = write_csv(tmp_path / "c.csv", "id,x\n1,0\n")
    assert read_modality(path, "c", "tabular").kind == "tabular"
