"""Consortium schema: derived from a reference folder without exact patient values, round-trips,
and refuses sites that depart from it, naming site, file and column, every problem at once."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedlego.common.data.dataset import Labels, ModalityData, MultimodalDataset
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.schema import (
    BagsSpec,
    ConsortiumSchema,
    LabelSpec,
    SchemaProblem,
    check_against_schema,
    round_outward,
    schema_from_site,
    schema_hash,
)
from fedlego.common.data.sitefolder import SiteData, read_site_folder

N = 60
Frames = dict[str, pd.DataFrame]


def reference_frames(seed: int = 0, n: int = N) -> Frames:
    """Labels (survival, days), a clinical table, a lab time series, images and bags."""
    rng = np.random.default_rng(seed)
    ids = [f"P{k:03d}" for k in range(n)]
    labels = pd.DataFrame(
        {
            "id": ids,
            "time": np.round(rng.exponential(700, n) + 1.3, 1),
            "event": rng.integers(0, 2, n),
        }
    )
    clinical = pd.DataFrame(
        {
            "id": ids,
            "age": np.round(rng.uniform(31, 86, n), 1),
            "sex": np.where(np.arange(n) % 2 == 0, "F", "M"),
            "stage": np.array(["I", "II", "III"])[np.arange(n) % 3],
            "creatinine": np.round(rng.lognormal(0.0, 0.35, n), 2),
        }
    )
    labs = pd.DataFrame(
        [
            {"id": i, "time": float(t), "variable": v, "value": float(np.round(rng.normal(mean, mean / 5), 2))}
            for i in ids
            for t in (0, 30, 90)
            for v, mean in (("hb", 13.0), ("crp", 20.0))
        ]
    )
    return {"labels": labels, "clinical": clinical, "labs": labs}


def write_folder(path: Path, frames: Frames, name: str = "north", image_shape: tuple[int, ...] = (8, 8)) -> Path:
    """A site folder by hand: labels.csv, clinical.csv, labs.csv, xray.npz, wsi.npz and site.json."""
    path.mkdir(parents=True)
    ids = frames["labels"]["id"].tolist()
    frames["labels"].to_csv(path / "labels.csv", index=False)
    modalities = {}
    for table, kind in (("clinical", "tabular"), ("labs", "timeseries")):
        if table in frames:
            frames[table].to_csv(path / f"{table}.csv", index=False)
            modalities[table] = {"kind": kind, "path": f"{table}.csv"}
    if "no_xray" not in frames:
        images = np.zeros((len(ids), *image_shape), dtype=np.uint8)
        np.savez(path / "xray.npz", ids=np.asarray(ids), images=images)
        modalities["xray"] = {"kind": "image", "path": "xray.npz"}
    np.savez(path / "wsi.npz", **{i: np.ones((3, 4), dtype=np.float32) for i in ids})
    modalities["wsi"] = {"kind": "bags", "path": "wsi.npz"}
    manifest = {"name": name, "task": "survival", "labels": "labels.csv", "modalities": modalities}
    (path / "site.json").write_text(json.dumps(manifest))
    return path


def site_with(tmp_path: Path, change: Callable[[Frames], None] | None = None, seed: int = 0, **kwargs) -> SiteData:
    """A site folder holding the reference data (``seed`` 0) or another sample, changed by ``change``."""
    frames = reference_frames(seed)
    if change is not None:
        change(frames)
    return read_site_folder(write_folder(tmp_path / "site", frames, **kwargs))


@pytest.fixture
def reference(tmp_path: Path) -> SiteData:
    return read_site_folder(write_folder(tmp_path / "reference", reference_frames()))


@pytest.fixture
def schema(reference: SiteData) -> ConsortiumSchema:
    return schema_from_site(reference, min_cell=10, time_unit="days")


def errors(problems: list[SchemaProblem]) -> list[SchemaProblem]:
    return [p for p in problems if p.severity == "error"]


def only_error(problems: list[SchemaProblem], column: str | None) -> SchemaProblem:
    found = [p for p in errors(problems) if p.column == column]
    assert len(found) == 1, problems
    return found[0]


# --------------------------------------------------------------------------- deriving, round trip


def test_schema_from_reference_round_trips(tmp_path: Path, schema: ConsortiumSchema) -> None:
    path = schema.write(tmp_path / "schema.json")
    assert ConsortiumSchema.read(path) == schema
    raw = json.loads(path.read_text())
    assert ConsortiumSchema.from_dict(raw).to_dict() == raw
    assert raw["version"] == 1 and raw["task"] == "survival" and raw["min_cell"] == 10
    assert raw["labels"]["time_unit"] == "days"
    modalities = raw["modalities"]
    assert modalities["clinical"]["columns"]["sex"] == {"type": "categorical", "unit": "", "categories": ["F", "M"]}
    assert modalities["clinical"]["columns"]["age"]["type"] == "numeric"
    assert sorted(modalities["labs"]["variables"]) == ["crp", "hb"]
    assert modalities["xray"] == {"kind": "image", "shape": [1, 8, 8]}
    assert modalities["wsi"] == {"kind": "bags", "features": 4}


def test_the_outcome_description_travels_with_the_schema_and_changes_its_hash(
    tmp_path: Path, reference: SiteData, schema: ConsortiumSchema
) -> None:
    named = schema_from_site(reference, min_cell=10, time_unit="days", outcome="death from any cause")
    assert named.labels.outcome == "death from any cause" and schema.labels.outcome is None
    assert ConsortiumSchema.read(named.write(tmp_path / "named.json")) == named
    assert "outcome" not in schema.to_dict()["labels"] and schema_hash(named) != schema_hash(schema)


def test_reference_site_checks_clean(reference: SiteData, schema: ConsortiumSchema) -> None:
    assert check_against_schema(reference, schema) == []
    other = check_against_schema(site_with(reference.path.parent, seed=1), schema)  # another sample
    assert errors(other) == [] and {p.column for p in other} <= {"time", "creatinine", "value"}


def test_ranges_round_outward_and_hold_no_patient_value(tmp_path: Path, schema: ConsortiumSchema) -> None:
    frames = reference_frames()
    times, ages = frames["labels"]["time"], frames["clinical"]["age"]
    low, high = schema.labels.time_range
    ordered = np.sort(times.to_numpy())  # the bounds come from the 10th lowest and highest (min-cell)
    assert low < ordered[9] and ordered[-10] < high and high == round_outward(ordered[-10], 1, up=True)
    assert ordered[-1] > high  # the longest times rest on fewer than min-cell patients: outside
    assert schema.modalities["clinical"].columns["age"].range[1] > np.sort(ages.to_numpy())[-10]
    text = schema.write(tmp_path / "schema.json").read_text()
    for value in (times.max(), times.min(), ages.max(), ages.min(), frames["clinical"]["creatinine"].max()):
        assert repr(float(value)) not in text and f"{value:g}" not in text


@pytest.mark.parametrize(
    ("value", "digits", "up", "expected"),
    [
        (3657.3, 1, True, 4000),
        (4000, 1, True, 5000),
        (3.2, 1, False, 3),
        (3, 1, False, 2),
        (1000, 1, False, 900),
        (0.3, 1, True, 0.4),
        (89, 2, True, 90),
        (-3.7, 1, False, -4),
        (-3.7, 1, True, -3),
        (0, 2, True, 0),
    ],
)
def test_round_outward(value: float, digits: int, up: bool, expected: float) -> None:
    assert round_outward(value, digits, up) == pytest.approx(expected)


def test_rare_categories_and_variables_are_not_written(tmp_path: Path) -> None:
    frames = reference_frames()
    frames["clinical"].loc[:3, "stage"] = "IV-rare"  # 4 patients
    rare = frames["labs"][frames["labs"]["id"].isin(frames["labels"]["id"][:5])].assign(variable="rare_marker")
    frames["labs"] = pd.concat([frames["labs"], rare])
    reference = read_site_folder(write_folder(tmp_path / "reference", frames))
    schema = schema_from_site(reference, min_cell=10)
    text = schema.write(tmp_path / "schema.json").read_text()
    assert "IV-rare" not in text and "rare_marker" not in text
    assert schema.modalities["clinical"].columns["stage"].categories == ("I", "II", "III")
    problems = check_against_schema(reference, schema)  # its own rare values: warnings, not named
    assert errors(problems) == [] and len(problems) == 2
    assert not any("IV-rare" in str(p) or "rare_marker" in str(p) for p in problems)
    assert any("1 rare value (4 rows" in p.message for p in problems)
    assert len(schema_from_site(reference, min_cell=4).modalities["clinical"].columns["stage"].categories) == 4


# --------------------------------------------------------------------------- refusals


def test_renamed_column_is_refused(tmp_path: Path, schema: ConsortiumSchema) -> None:
    site = site_with(tmp_path, lambda f: f.update(clinical=f["clinical"].rename(columns={"sex": "gender"})))
    problems = check_against_schema(site, schema)
    missing = only_error(problems, "sex")
    assert str(missing).startswith("site 'north': clinical.csv: column 'sex': missing")
    assert "this file has columns not in the schema: 'gender'" in missing.message
    assert "not in the consortium schema" in only_error(problems, "gender").message
    assert len(errors(problems)) == 2


def test_missing_column_is_refused(tmp_path: Path, schema: ConsortiumSchema) -> None:
    site = site_with(tmp_path, lambda f: f.update(clinical=f["clinical"].drop(columns=["age"])))
    problem = only_error(check_against_schema(site, schema), "age")
    assert (problem.site, problem.file) == ("north", "clinical.csv")
    assert problem.message == "missing (numeric in the schema)"


def test_type_mismatch_is_refused(tmp_path: Path, schema: ConsortiumSchema) -> None:
    site = site_with(tmp_path, lambda f: f["clinical"].__setitem__("sex", f["clinical"]["sex"].map({"F": 0, "M": 1})))
    problem = only_error(check_against_schema(site, schema), "sex")
    assert problem.message == "categorical (text) in the schema but numeric here"


def test_extra_category_is_refused_and_rare_ones_not_named(tmp_path: Path, schema: ConsortiumSchema) -> None:
    def change(frames: Frames) -> None:
        frames["clinical"].loc[:14, "sex"] = "unknown"  # 15 patients: named
        frames["clinical"].loc[15:16, "sex"] = "X-rare"  # 2 patients: counted only

    problems = check_against_schema(site_with(tmp_path, change), schema)
    problem = only_error(problems, "sex")
    assert "17 values not among the consortium's categories ['F', 'M']" in problem.message
    assert "'unknown' (15 rows)" in problem.message and "1 rare value (2 rows" in problem.message
    assert "X-rare" not in str(problem)


def test_survival_times_in_another_unit_are_refused(tmp_path: Path, schema: ConsortiumSchema) -> None:
    site = site_with(tmp_path, lambda f: f["labels"].__setitem__("time", f["labels"]["time"] * 30))
    problem = only_error(check_against_schema(site, schema), "time")
    assert problem.file == "labels.csv"
    assert problem.message.startswith("survival times look like another unit (range about")
    assert "which says days" in problem.message and "suggests months vs days" in problem.message


def test_survival_times_in_years_are_refused(tmp_path: Path, schema: ConsortiumSchema) -> None:
    site = site_with(tmp_path, lambda f: f["labels"].__setitem__("time", f["labels"]["time"] / 365.25))
    problem = only_error(check_against_schema(site, schema), "time")
    assert "x smaller" in problem.message and "suggests years vs days" in problem.message


def test_lab_column_times_1000_is_refused(tmp_path: Path, schema: ConsortiumSchema) -> None:
    site = site_with(tmp_path, lambda f: f["clinical"].__setitem__("creatinine", f["clinical"]["creatinine"] * 1000))
    problem = only_error(check_against_schema(site, schema), "creatinine")
    assert "look like another unit" in problem.message and "a factor of ~1000" in problem.message


def test_time_series_variable_in_another_unit_is_refused(tmp_path: Path, schema: ConsortiumSchema) -> None:
    def change(frames: Frames) -> None:
        labs = frames["labs"]
        labs.loc[labs["variable"] == "hb", "value"] *= 10

    problem = only_error(check_against_schema(site_with(tmp_path, change), schema), "value")
    assert (problem.file, problem.severity) == ("labs.csv", "error")
    assert problem.message.startswith("values of variable 'hb' look like another unit")


def test_values_slightly_outside_are_warnings(tmp_path: Path, schema: ConsortiumSchema) -> None:
    site = site_with(tmp_path, lambda f: f["clinical"].__setitem__("age", f["clinical"]["age"] * 1.4))
    problems = check_against_schema(site, schema)
    assert errors(problems) == []
    (warning,) = [p for p in problems if p.column == "age"]
    assert warning.severity == "warning" and "values outside the consortium range" in warning.message
    assert str(warning).startswith("site 'north': clinical.csv: column 'age': ")
    assert "values outside the consortium range [38, 80]" in str(warning)


def test_modality_kind_task_and_shapes_are_refused(tmp_path: Path, schema: ConsortiumSchema) -> None:
    site = site_with(tmp_path, image_shape=(8, 8, 3))
    changed = dataclasses.replace(schema, modalities={**schema.modalities, "labs": BagsSpec(4), "wsi": BagsSpec(5)})
    problems = check_against_schema(site, changed)
    assert {(p.file, p.message.split(" here")[0]) for p in errors(problems)} == {
        ("labs.csv", "modality 'labs' is timeseries"),
        ("xray.npz", "60 images are (C, H, W) = (3, 8, 8)"),
        ("wsi.npz", "60 bags have F = 4 features"),
    }
    binary = dataclasses.replace(schema, task="binary", labels=LabelSpec(classes=(0, 1)))
    (problem,) = [p for p in check_against_schema(site, binary) if p.file == "site.json"]
    assert (problem.file, problem.message) == (
        "site.json",
        "task is 'survival' here but 'binary' in the consortium schema",
    )


def test_every_problem_is_listed_at_once(tmp_path: Path, schema: ConsortiumSchema) -> None:
    def change(frames: Frames) -> None:
        frames["no_xray"] = pd.DataFrame()  # a site holding some of the consortium's modalities: no problem
        frames["labels"]["time"] *= 30
        frames["clinical"].loc[:11, "stage"] = "IV"
        frames["clinical"]["creatinine"] *= 1000

    site = site_with(tmp_path, change)
    problems = check_against_schema(site, schema)
    assert sorted((Path(p.file).name, p.column, p.severity) for p in errors(problems)) == [
        ("clinical.csv", "creatinine", "error"),
        ("clinical.csv", "stage", "error"),
        ("labels.csv", "time", "error"),
    ]
    ids = set(site.dataset.labels.table.index)
    values = {f"{v:g}" for v in site.dataset.modalities["clinical"].table["creatinine"]}
    for problem in problems:
        words = set(str(problem).replace(",", " ").replace("(", " ").replace(")", " ").split())
        assert not words & ids and not words & values, problem


def test_time_series_variables_outside_the_schema(tmp_path: Path, schema: ConsortiumSchema) -> None:
    def change(frames: Frames) -> None:
        labs = frames["labs"]
        frames["labs"] = labs[labs["variable"] != "crp"].replace({"variable": {"hb": "haemoglobin"}})

    problems = check_against_schema(site_with(tmp_path, change), schema)
    assert [(p.column, p.severity, p.message) for p in problems] == [
        ("variable", "error", "variable 'haemoglobin' (observed in 60 patients) is not in the consortium schema"),
        ("variable", "warning", "variable 'crp' of the consortium schema is never observed here"),
        ("variable", "warning", "variable 'hb' of the consortium schema is never observed here"),
    ]


def classification_site(task: str, labels: list[int]) -> SiteData:
    """An in-memory classification site with one tabular modality."""
    ids = [f"C{k:03d}" for k in range(len(labels))]
    table = pd.DataFrame({"label": labels}, index=pd.Index(ids, name="id"))
    clinical = pd.DataFrame({"age": np.linspace(40.5, 80.5, len(ids))}, index=table.index)
    modality = ModalityData("clinical", "tabular", "clinical.csv", table=clinical)
    dataset = MultimodalDataset("east", Labels(task, table, "labels.csv"), {"clinical": modality})
    return SiteData("east", dataset, {"train": ids, "validation": [], "test": []})


def test_classification_classes(tmp_path: Path) -> None:
    schema = schema_from_site(classification_site("multiclass", [0, 1, 2] * 10))
    assert schema.to_dict()["labels"] == {"classes": [0, 1, 2]}
    assert ConsortiumSchema.from_dict(schema.to_dict()) == schema
    assert check_against_schema(classification_site("multiclass", [0, 1] * 15), schema) == []
    (problem,) = check_against_schema(classification_site("multiclass", [0, 1, 2, 3] * 8), schema)
    assert (problem.file, problem.column, problem.message) == (
        "labels.csv",
        "label",
        "8 labels hold classes not in the consortium's [0, 1, 2]",
    )
    (problem,) = check_against_schema(classification_site("binary", [0, 1] * 15), schema)
    assert problem.message == "task is 'binary' here but 'multiclass' in the consortium schema"


# --------------------------------------------------------------------------- hash, malformed files


def test_schema_hash_is_stable_and_follows_changes(
    tmp_path: Path, reference: SiteData, schema: ConsortiumSchema
) -> None:
    digest = schema_hash(schema)
    assert len(digest) == 64 and digest == schema_hash(schema_from_site(reference))
    assert schema_hash(ConsortiumSchema.read(schema.write(tmp_path / "s.json"))) == digest
    assert schema_hash(dataclasses.replace(schema, min_cell=5)) != digest
    raw = schema.to_dict()
    raw["modalities"]["clinical"]["columns"]["age"]["unit"] = "years"
    assert schema_hash(ConsortiumSchema.from_dict(raw)) != digest


def _set(path: list[str], value: object) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        for key in path[:-1]:
            raw = raw[key]
        raw[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_set(["version"], 2), "version"),
        (_set(["task"], "regression"), "task"),
        (_set(["min_cell"], 0), "min_cell"),
        (_set(["labels", "time_unit"], "hours"), "labels.time_unit"),
        (_set(["labels", "time_range"], [5, 1]), "labels.time_range"),
        (_set(["modalities", "clinical", "columns", "age", "range"], "0-100"), "modalities.clinical.columns.age.range"),
        (_set(["modalities", "clinical", "columns", "sex", "type"], "text"), "modalities.clinical.columns.sex.type"),
        (
            _set(["modalities", "clinical", "columns", "sex", "categories"], ["F", "F"]),
            "modalities.clinical.columns.sex.categories",
        ),
        (_set(["modalities", "clinical", "columns", "sex", "range"], [0, 1]), "modalities.clinical.columns.sex"),
        (_set(["modalities", "xray", "shape"], [1, 8]), "modalities.xray.shape"),
        (_set(["modalities", "wsi", "kind"], "video"), "modalities.wsi.kind"),
        (_set(["modalities", "wsi", "features"], True), "modalities.wsi.features"),
        (lambda raw: raw.pop("labels"), "labels"),
        (_set(["labels", "outcome"], "death\nid 4711"), "labels.outcome"),
        (_set(["labels", "outcome"], "x" * 121), "labels.outcome"),
        (_set(["labels", "outcome"], ["death"]), "labels.outcome"),
        (_set(["labels", "event"], "death"), "labels"),
    ],
)
def test_read_refuses_wrong_fields(
    tmp_path: Path, schema: ConsortiumSchema, change: Callable[[dict], None], field: str
) -> None:
    raw = schema.to_dict()
    change(raw)
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(SiteDataError, match=f"field '{field}'") as caught:
        ConsortiumSchema.read(path)
    assert caught.value.file == str(path)
    with pytest.raises(ValueError, match=f"field '{field}'"):
        ConsortiumSchema.from_dict(raw)


def test_read_refuses_files_that_are_not_json(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text("{not json")
    with pytest.raises(SiteDataError, match="not a valid JSON schema file") as caught:
        ConsortiumSchema.read(path)
    assert caught.value.file == str(path)
    with pytest.raises(SiteDataError, match="file not found"):
        ConsortiumSchema.read(tmp_path / "absent.json")
    path.write_text("[1, 2]")
    with pytest.raises(SiteDataError, match="must be an object"):
        ConsortiumSchema.read(path)
