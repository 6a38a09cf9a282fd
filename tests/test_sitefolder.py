"""Site folders: written folders read back equal; hash roles are coordination-free; bad folders fail clearly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedlego.common.data.bundled import load_tcga_acc
from fedlego.common.data.dataset import MultimodalDataset
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.scenarios import (
    FoldSplit,
    SiteSpec,
    build_scenario,
    dataset_splits,
    site_dataset,
    site_split,
)
from fedlego.common.data.sitefolder import (
    DEFAULT_ROLE_SALT,
    hash_roles,
    read_site_folder,
    write_site_folder,
)
from fedlego.common.data.synthetic import SyntheticModality, make_synthetic

MODALITIES = [
    SyntheticModality("clin", "tabular", 1.0, 0.2, 5),
    SyntheticModality("labs", "timeseries", 0.8, 0.2, 3),
    SyntheticModality("xray", "image", 0.6, 0.2),
    SyntheticModality("wsi", "bags", 0.5, 0.2, 4),
]


def synthetic(task: str = "survival") -> MultimodalDataset:
    return make_synthetic(60, MODALITIES, task=task, seed=3)


def assert_same_data(read: MultimodalDataset, expected: MultimodalDataset) -> None:
    """Same labels and modalities (names, kinds, ids, values; floats up to CSV round-off)."""
    columns = list(read.labels.table.columns)
    assert read.labels.task == expected.labels.task
    pd.testing.assert_frame_equal(read.labels.table, expected.labels.table[columns], check_exact=False, rtol=1e-12)
    assert list(read.modalities) == [n for n, m in expected.modalities.items() if m.patient_ids()]
    for name, data in read.modalities.items():
        other = expected.modalities[name]
        assert data.kind == other.kind
        assert data.patient_ids() == other.patient_ids()
        if data.kind == "tabular":
            pd.testing.assert_frame_equal(data.table, other.table, check_dtype=False, check_exact=False, rtol=1e-12)
        elif data.kind == "timeseries":
            want = other.table.dropna(subset=["value"]).reset_index(drop=True)
            pd.testing.assert_frame_equal(data.table, want, check_dtype=False, check_exact=False, rtol=1e-12)
        else:
            for patient, array in other.arrays.items():
                np.testing.assert_array_equal(data.arrays[patient], array)
                assert data.arrays[patient].dtype == array.dtype


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("task", ["survival", "binary", "multiclass"])
def test_synthetic_pooled_site_round_trips(tmp_path: Path, task: str) -> None:
    dataset = synthetic(task)
    site = build_scenario(dataset, "pooled").sites[0]
    split = dataset_splits(dataset, n_folds=1)[0]
    folder = write_site_folder(dataset, site, split, tmp_path / "site")
    manifest = json.loads((folder / "site.json").read_text())
    assert manifest == {
        "name": "pooled",
        "task": task,
        "labels": "labels.csv",
        "modalities": {
            "clin": {"kind": "tabular", "path": "clin.csv"},
            "labs": {"kind": "timeseries", "path": "labs.csv"},
            "xray": {"kind": "image", "path": "xray.npz"},
            "wsi": {"kind": "bags", "path": "wsi.npz"},
        },
    }
    read = read_site_folder(folder)
    assert read.name == "pooled"
    assert_same_data(read.dataset, site_dataset(dataset, site))
    assert read.roles == {"train": split.train, "validation": split.validation, "test": split.test}


def test_synthetic_scenario_sites_round_trip_with_withheld_data(tmp_path: Path) -> None:
    dataset = synthetic()
    scenario = build_scenario(dataset, paired_fraction=0.5, missing_rate=0.5, seed=2)
    split = dataset_splits(dataset, n_folds=1)[0]
    for site in scenario.sites:
        read = read_site_folder(write_site_folder(dataset, site, split, tmp_path / site.name))
        assert_same_data(read.dataset, site_dataset(dataset, site))
        assert read.roles == site_split(site, dataset, split)
    paired = next(s for s in scenario.sites if s.withheld)
    read = read_site_folder(tmp_path / paired.name)
    for name, withheld in paired.withheld.items():
        assert not set(withheld) & set(read.dataset.modalities[name].patient_ids())


def test_tcga_acc_sites_round_trip(tmp_path: Path) -> None:
    dataset = load_tcga_acc()
    scenario = build_scenario(dataset, missing_rate=0.3, seed=1)
    split = dataset_splits(dataset)[1]
    for site in scenario.sites:
        read = read_site_folder(write_site_folder(dataset, site, split, tmp_path / site.name))
        assert read.name == site.name and read.dataset.labels.time_unit == "days"  # written to site.json
        assert_same_data(read.dataset, site_dataset(dataset, site))
        assert read.roles == site_split(site, dataset, split)
        site_patients = set(site.patient_ids)
        assert all(set(ids) <= site_patients for ids in read.roles.values())


def test_without_split_roles_come_from_hash_and_stale_split_is_removed(tmp_path: Path) -> None:
    dataset = synthetic()
    site = build_scenario(dataset, "pooled").sites[0]
    folder = write_site_folder(dataset, site, dataset_splits(dataset, n_folds=1)[0], tmp_path / "site")
    write_site_folder(dataset, site, None, folder)
    assert not (folder / "split.csv").exists()
    read = read_site_folder(folder)
    assert read.roles == hash_roles(dataset.patient_ids(), DEFAULT_ROLE_SALT)
    assert read_site_folder(folder, salt="other").roles == hash_roles(dataset.patient_ids(), "other")


def test_empty_modality_is_left_out(tmp_path: Path) -> None:
    dataset = synthetic()
    patients = dataset.modalities["clin"].patient_ids()[:5]
    site = SiteSpec("s", ["clin", "wsi"], patients, withheld={"wsi": patients})
    read = read_site_folder(write_site_folder(dataset, site, None, tmp_path / "s"))
    assert list(read.dataset.modalities) == ["clin"]


def test_reserved_modality_name_is_refused(tmp_path: Path) -> None:
    dataset = make_synthetic(20, [SyntheticModality("labels", "tabular", 1.0)], seed=0)
    site = build_scenario(dataset, "pooled").sites[0]
    with pytest.raises(ValueError, match="labels"):
        write_site_folder(dataset, site, None, tmp_path / "s")


# --------------------------------------------------------------------------- hash roles

IDS = [f"H{i:05d}" for i in range(2000)]


def role_of(roles: dict[str, list[str]]) -> dict[str, str]:
    return {patient: role for role, ids in roles.items() for patient in ids}


def test_hash_roles_deterministic_and_order_independent() -> None:
    roles = hash_roles(IDS, "fold-0")
    shuffled = IDS.copy()
    random.Random(0).shuffle(shuffled)
    assert hash_roles(IDS, "fold-0") == roles
    assert hash_roles(shuffled, "fold-0") == roles
    assert sorted(p for ids in roles.values() for p in ids) == IDS


def test_hash_roles_independent_of_other_ids() -> None:
    full = role_of(hash_roles(IDS, "s"))
    for subset in (IDS[::7], IDS[1000:1050], [*IDS[:3], "someone-else"]):
        part = role_of(hash_roles(subset, "s"))
        assert all(part[p] == full[p] for p in subset if p in full)


def test_hash_roles_fractions_and_salt() -> None:
    for fractions in ((0.7, 0.15, 0.15), (0.5, 0.25, 0.25)):
        roles = hash_roles(IDS, "s", fractions)
        shares = [len(roles[r]) / len(IDS) for r in ("train", "validation", "test")]
        assert np.allclose(shares, fractions, atol=0.04)
    assert role_of(hash_roles(IDS, "a")) != role_of(hash_roles(IDS, "b"))


@pytest.mark.parametrize("fractions", [(0.7, 0.3), (0.8, 0.2, 0.2), (1.0, 0.0, 0.0)])
def test_hash_roles_rejects_bad_fractions(fractions: tuple) -> None:
    with pytest.raises(ValueError, match="fractions"):
        hash_roles(IDS, "s", fractions)


# --------------------------------------------------------------------------- site.json errors


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    dataset = synthetic()
    site = build_scenario(dataset, "pooled").sites[0]
    return write_site_folder(dataset, site, dataset_splits(dataset, n_folds=1)[0], tmp_path / "site")


def edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / "site.json").read_text())
    edit(manifest)
    (folder / "site.json").write_text(json.dumps(manifest))


def expect_error(folder: Path, file: str, *words: str) -> SiteDataError:
    with pytest.raises(SiteDataError) as info:
        read_site_folder(folder)
    assert info.value.file == str(folder / file)
    for word in words:
        assert word in str(info.value)
    return info.value


def test_missing_site_json(folder: Path) -> None:
    (folder / "site.json").unlink()
    expect_error(folder, "site.json", "not found")


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]"])
def test_site_json_not_a_json_object(folder: Path, text: str) -> None:
    (folder / "site.json").write_text(text)
    expect_error(folder, "site.json", "JSON")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda m: m.pop("name"), ["'name'"]),
        (lambda m: m.update(task="regression"), ["'task'", "regression"]),
        (lambda m: m.pop("task"), ["'task'"]),
        (lambda m: m.update(labels=""), ["'labels'"]),
        (lambda m: m.pop("modalities"), ["'modalities'"]),
        (lambda m: m.update(modalities={}), ["'modalities'"]),
        (lambda m: m["modalities"].update(wsi="wsi.npz"), ["'modalities.wsi'"]),
        (lambda m: m["modalities"]["xray"].update(kind="video"), ["'modalities.xray.kind'", "video"]),
        (lambda m: m["modalities"]["clin"].pop("kind"), ["'modalities.clin.kind'"]),
        (lambda m: m["modalities"]["labs"].pop("path"), ["'modalities.labs.path'"]),
        (lambda m: m.update(time_unit="fortnights"), ["'time_unit'", "fortnights", "days"]),
    ],
)
def test_site_json_field_errors(folder: Path, edit, words: list[str]) -> None:
    edit_manifest(folder, edit)
    expect_error(folder, "site.json", *words)


def test_manifest_pointing_at_missing_file_names_it(folder: Path) -> None:
    edit_manifest(folder, lambda m: m["modalities"]["clin"].update(path="nowhere.csv"))
    expect_error(folder, "nowhere.csv", "not found")


# --------------------------------------------------------------------------- split.csv errors


def write_split(folder: Path, rows: list[tuple[object, object]], columns: tuple[str, str] = ("id", "role")) -> None:
    pd.DataFrame(rows, columns=list(columns)).to_csv(folder / "split.csv", index=False)


def test_split_without_role_column(folder: Path) -> None:
    write_split(folder, [("P0000", "train")], columns=("id", "set"))
    error = expect_error(folder, "split.csv", "role")
    assert error.column == "role"


def test_split_without_id_column(folder: Path) -> None:
    write_split(folder, [("P0000", "train")], columns=("patient", "role"))
    assert expect_error(folder, "split.csv").column == "id"


def test_split_bad_roles_name_rows(folder: Path) -> None:
    write_split(folder, [("P0000", "train"), ("P0001", "training"), ("P0002", None), ("P0003", "test")])
    error = expect_error(folder, "split.csv", "role must be one of")
    assert (error.column, error.rows) == ("role", ["P0001", "P0002"])


def test_split_missing_and_duplicate_ids(folder: Path) -> None:
    write_split(folder, [("P0000", "train"), (None, "test")])
    assert expect_error(folder, "split.csv", "missing").rows == [2]
    write_split(folder, [("P0000", "train"), ("P0000", "test")])
    assert expect_error(folder, "split.csv", "duplicate").rows == ["P0000"]


def test_split_ids_not_in_labels(folder: Path) -> None:
    write_split(folder, [("P0000", "train"), ("X1", "test"), ("X2", "validation")])
    error = expect_error(folder, "split.csv", "labels")
    assert (error.column, error.rows) == ("id", ["X1", "X2"])


def test_empty_split_file(folder: Path) -> None:
    (folder / "split.csv").write_text("id,role\n")
    expect_error(folder, "split.csv", "no data rows")


def test_split_roles_keep_only_usable_patients(tmp_path: Path) -> None:
    dataset = synthetic()
    patients = dataset.patient_ids()[:10]
    site = SiteSpec("s", ["clin"], patients)
    folder = write_site_folder(dataset, site, None, tmp_path / "s")
    split = FoldSplit(0, patients[:6], patients[6:8], patients[8:])
    write_split(folder, [(p, "train") for p in split.train] + [(p, "test") for p in split.test])
    with_clin = set(dataset.modalities["clin"].patient_ids())
    expected = {"train": split.train, "validation": [], "test": split.test}
    assert read_site_folder(folder).roles == {r: [p for p in ids if p in with_clin] for r, ids in expected.items()}
    assert set(patients) - with_clin
