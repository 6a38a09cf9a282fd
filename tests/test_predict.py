"""``fedlego predict``: packages from a real (tiny) training run give the in-memory models' scores
on a label-free site folder; bad packages, keys and data are refused with clear errors."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedlego.cli import main
from fedlego.client.runtime import SiteRuntime, evaluable_models
from fedlego.common.config import ModelConfig, TrainConfig
from fedlego.common.data.dataset import ModalityData
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.kinds import modality_kind
from fedlego.common.data.preprocess import TabularPreprocessor
from fedlego.common.data.scenarios import SiteSpec
from fedlego.common.data.sitefolder import DEFAULT_ROLE_SALT, hash_roles, write_site_folder
from fedlego.common.data.synthetic import SyntheticModality, make_synthetic
from fedlego.common.data.tensors import task_for
from fedlego.common.lego import LegoFuse, LegoMerge
from fedlego.common.packaging import (
    PackageError,
    block_from_package,
    fused_to_package,
    merged_to_package,
    parse_model_package,
    serialize,
)
from fedlego.common.prediction import PredictionError, PredictionWarning, predict_folder, survival_columns
from fedlego.common.protocol import EvaluateReply
from fedlego.common.signing import COORDINATOR, generate_signing_key, public_key_pem, sign_package
from fedlego.common.tasks import SurvivalTask
from fedlego.common.training import predict
from fedlego.common.workflow import unimodal_forward

MODALITIES = [SyntheticModality("clin", "tabular", 1.0, 0.1, 4), SyntheticModality("labs", "timeseries", 0.8, 0.2, 3)]
CONFIG = ModelConfig(latent_channels=8, latent_dim=16, heads=2, head_dim=8, encoder_width=16)
RUN = "run-1"


@dataclass
class Run:
    """A tiny trained run: in-memory models, their packages on disk, keys and the site's data."""

    site: SiteRuntime
    task: object
    models: dict
    packages: dict[str, Path]
    public_key: Path
    other_key: Path
    root: Path


def write_folder(site: SiteRuntime, path: Path, modalities: list[str]) -> Path:
    """The site's data as a site folder without labels (no labels file, no task in site.json)."""
    spec = SiteSpec(site.name, modalities, site.dataset.patient_ids())
    folder = write_site_folder(site.dataset, spec, None, path)
    (folder / "labels.csv").unlink()
    manifest = json.loads((folder / "site.json").read_text())
    del manifest["labels"], manifest["task"]
    (folder / "site.json").write_text(json.dumps(manifest))
    return folder


def build_run(root: Path, task_kind: str, epochs: int) -> Run:
    dataset = make_synthetic(60, MODALITIES, task=task_kind, seed=1)
    roles = hash_roles(dataset.patient_ids(), DEFAULT_ROLE_SALT)
    site = SiteRuntime("hospital", dataset, roles, min_cell=1)  # 9 test patients: no disclosure control here
    task = task_for(dataset.labels, roles["train"])
    training = TrainConfig(epochs=epochs, patience=2, batch_size=16)
    block_packages = site.train_blocks(task, CONFIG, training, RUN).packages
    blocks = {m: block_from_package(p).eval() for m, p in block_packages.items()}
    models = {"merged": LegoMerge(blocks).eval(), "fused": LegoFuse(blocks, "stack").eval(), "block": blocks["clin"]}
    key, site_key, other = generate_signing_key(), generate_signing_key(), generate_signing_key()
    packages = {
        "merged": merged_to_package(models["merged"], block_packages, RUN),
        "fused": fused_to_package(models["fused"], block_packages, RUN),
    }
    for package in packages.values():
        sign_package(package, key, COORDINATOR)
    sign_package(block_packages["clin"], site_key, "hospital")
    packages["block"] = block_packages["clin"]
    paths = {name: root / f"{name}.pb" for name in packages}
    for name, package in packages.items():
        paths[name].write_bytes(serialize(package))
    (root / "coordinator.pub").write_text(public_key_pem(key.public_key()))
    (root / "site.pub").write_text(public_key_pem(site_key.public_key()))
    (root / "other.pub").write_text(public_key_pem(other.public_key()))
    return Run(site, task, models, paths, root / "coordinator.pub", root / "other.pub", root)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    return build_run(tmp_path_factory.mktemp("predict"), "survival", epochs=2)


def expected_scores(run: Run, name: str, modalities: list[str]) -> pd.Series:
    """The in-memory model's scores for the site's patients holding any of ``modalities``."""
    model = run.models[name]
    blocks = {model.modality: model} if name == "block" else dict(model.blocks)
    site = SiteRuntime(run.site.name, run.site.dataset, {"test": run.site.dataset.patient_ids()})
    data = site.tensors_for({m: blocks[m] for m in modalities}, "test").restrict(modalities)
    logits = predict(model, data, unimodal_forward(model) if name == "block" else None)
    return pd.Series(run.task.scores(logits), index=data.ids)


@pytest.mark.parametrize("name", ["merged", "fused", "block"])
def test_package_predictions_equal_the_in_memory_model(run: Run, tmp_path: Path, name: str) -> None:
    folder = write_folder(run.site, tmp_path / "site", ["clin", "labs"])
    key = run.root / ("site.pub" if name == "block" else "coordinator.pub")
    frame = predict_folder(run.packages[name], folder, coordinator_key=key)
    used = ["clin"] if name == "block" else ["clin", "labs"]
    expected = expected_scores(run, name, used)
    assert list(frame["patient_id"]) == list(expected.index)
    np.testing.assert_allclose(frame["risk"].to_numpy(), expected.to_numpy(), rtol=0, atol=1e-5)
    cuts = [f"survival_at_{c:.4g}" for c in run.task.cut_points]  # synthetic labels state no unit
    assert list(frame.columns) == ["patient_id", "modalities", "risk", *cuts]
    assert list(frame.attrs["columns"]) == list(frame.columns)
    survival = frame[cuts].to_numpy()
    assert ((survival > 0) & (survival < 1)).all() and (np.diff(survival, axis=1) <= 0).all()
    assert set(frame["modalities"]) <= {"clin", "labs", "clin+labs"}


def test_a_subset_of_the_modalities_is_enough(run: Run, tmp_path: Path) -> None:
    folder = write_folder(run.site, tmp_path / "site", ["labs"])
    frame = predict_folder(run.packages["fused"], folder, coordinator_key=run.public_key)
    expected = expected_scores(run, "fused", ["labs"])
    assert list(frame["patient_id"]) == list(expected.index) and set(frame["modalities"]) == {"labs"}
    np.testing.assert_allclose(frame["risk"].to_numpy(), expected.to_numpy(), rtol=0, atol=1e-5)


def test_classification_gives_class_probabilities(tmp_path: Path) -> None:
    run = build_run(tmp_path, "multiclass", epochs=0)
    folder = write_folder(run.site, tmp_path / "site", ["clin", "labs"])
    frame = predict_folder(run.packages["merged"], folder, coordinator_key=run.public_key)
    columns = [f"p_{k}" for k in range(run.task.n_classes)]
    assert list(frame.columns) == ["patient_id", "modalities", *columns] and len(columns) == 3
    np.testing.assert_allclose(frame[columns].sum(axis=1), 1.0, atol=1e-6)


def test_tampered_package_is_refused_even_unverified(run: Run, tmp_path: Path) -> None:
    package = parse_model_package(run.packages["merged"].read_bytes())
    data = bytearray(package.tensors[0].data)
    data[0] ^= 0xFF
    package.tensors[0].data = bytes(data)
    path = tmp_path / "tampered.pb"
    path.write_bytes(serialize(package))
    folder = write_folder(run.site, tmp_path / "site", ["clin"])
    with pytest.raises(PackageError, match=f"{re.escape(str(path))}: .*content hash does not match"):
        predict_folder(path, folder, coordinator_key=run.public_key)
    with pytest.raises(PackageError, match="content hash does not match"), pytest.warns(PredictionWarning):
        predict_folder(path, folder, unverified=True)


def test_unsigned_or_wrongly_signed_package_is_refused_unless_unverified(run: Run, tmp_path: Path) -> None:
    folder = write_folder(run.site, tmp_path / "site", ["clin"])
    package = parse_model_package(run.packages["merged"].read_bytes())
    package.ClearField("signature")
    unsigned = tmp_path / "unsigned.pb"
    unsigned.write_bytes(serialize(package))
    with pytest.raises(PackageError, match="unsigned"):
        predict_folder(unsigned, folder, coordinator_key=run.public_key)
    with pytest.raises(PackageError, match="bad signature"):
        predict_folder(run.packages["merged"], folder, coordinator_key=run.other_key)
    with pytest.raises(PredictionError, match="public key is needed"):
        predict_folder(unsigned, folder)
    with pytest.warns(PredictionWarning, match="signature NOT verified"):
        assert len(predict_folder(unsigned, folder, unverified=True)) > 0


def test_missing_feature_columns_are_named(run: Run, tmp_path: Path) -> None:
    folder = write_folder(run.site, tmp_path / "site", ["clin", "labs"])
    table = pd.read_csv(folder / "clin.csv", dtype={"id": str})
    dropped = list(table.columns[1:3])
    table.drop(columns=dropped).to_csv(folder / "clin.csv", index=False)
    with pytest.raises(SiteDataError, match=r"clin\.csv") as error:
        predict_folder(run.packages["merged"], folder, coordinator_key=run.public_key)
    assert all(column in str(error.value) for column in dropped)


def test_text_in_a_numeric_column_is_named_not_imputed(run: Run, tmp_path: Path) -> None:
    folder = write_folder(run.site, tmp_path / "site", ["clin", "labs"])
    table = pd.read_csv(folder / "clin.csv", dtype={"id": str})
    column = table.columns[1]
    table[column] = table[column].astype(object)
    table.loc[2, column] = "n/a (lab closed)"
    table.to_csv(folder / "clin.csv", index=False)
    with pytest.raises(SiteDataError, match=r"clin\.csv: column '.*': non-numeric values") as error:
        predict_folder(run.packages["merged"], folder, coordinator_key=run.public_key)
    assert column in str(error.value) and "lab closed" in str(error.value) and table.loc[2, "id"] in str(error.value)


def test_bad_inputs_give_errors_naming_the_culprit(run: Run, tmp_path: Path) -> None:
    folder = write_folder(run.site, tmp_path / "site", ["clin"])
    key = {"coordinator_key": run.public_key}
    with pytest.raises(PredictionError, match=r"nowhere\.pb: cannot read"):
        predict_folder(tmp_path / "nowhere.pb", folder, **key)
    for content in (b"", b"\xff" * 64, (folder / "site.json").read_bytes()):
        (tmp_path / "garbage.pb").write_bytes(content)
        with pytest.raises(PackageError, match=r"garbage\.pb: not a fedlego model or block package"):
            predict_folder(tmp_path / "garbage.pb", folder, **key)
    with pytest.raises(SiteDataError, match="no-site: site folder not found"):
        predict_folder(run.packages["merged"], tmp_path / "no-site", **key)
    manifest = json.loads((folder / "site.json").read_text())
    manifest["modalities"] = {"other": manifest["modalities"]["clin"]}
    (folder / "site.json").write_text(json.dumps(manifest))
    with pytest.raises(SiteDataError, match=r"site.json: holds none of the modalities \['clin', 'labs'\]"):
        predict_folder(run.packages["merged"], folder, **key)


def test_patients_without_usable_data_are_skipped_with_a_warning(run: Run, tmp_path: Path) -> None:
    folder = write_folder(run.site, tmp_path / "site", ["labs"])
    labs = pd.read_csv(folder / "labs.csv", dtype={"id": str})
    n_patients = labs["id"].nunique()
    extra = pd.DataFrame({"id": ["X1", "X2"], "time": [0.0, 0.0], "variable": ["unseen", "unseen"], "value": [1, 2]})
    pd.concat([labs, extra]).to_csv(folder / "labs.csv", index=False)
    with pytest.warns(PredictionWarning, match=f"2 of {n_patients + 2} patients have no usable data"):
        frame = predict_folder(run.packages["merged"], folder, coordinator_key=run.public_key)
    assert len(frame) == n_patients and not frame["patient_id"].isin(["X1", "X2"]).any()
    extra.to_csv(folder / "labs.csv", index=False)
    with pytest.raises(SiteDataError, match=r"labs\.csv: column 'variable': none of the variables"):
        predict_folder(run.packages["merged"], folder, coordinator_key=run.public_key)


def test_cli_writes_the_csv_and_fails_with_exit_code_2(run: Run, tmp_path: Path, capsys) -> None:
    folder = write_folder(run.site, tmp_path / "site", ["clin", "labs"])
    out = tmp_path / "predictions.csv"
    model = str(run.packages["merged"])
    args = ["predict", "--model", model, "--data", str(folder), "--out", str(out)]
    assert main([*args, "--coordinator-key", str(run.public_key)]) == 0
    frame = pd.read_csv(out, dtype={"patient_id": str})
    assert list(frame.columns[:3]) == ["patient_id", "modalities", "risk"]
    assert len(frame.columns) == 3 + len(run.task.cut_points)
    assert len(frame) == len(run.site.dataset.patient_ids())
    described = json.loads(out.with_suffix(".columns.json").read_text())["columns"]
    assert list(described) == list(frame.columns) and "not state the unit" in described[frame.columns[3]]
    assert main([*args, "--coordinator-key", str(run.other_key)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"fedlego: error: {model}: ") and "bad signature" in error
    assert main([*args, "--unverified"]) == 0
    assert f"fedlego: warning: {model}: signature NOT verified" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(args)  # neither --coordinator-key nor --unverified
    assert exit_info.value.code == 2
    np.testing.assert_array_equal(pd.read_csv(out)["risk"], frame["risk"])  # the --unverified run's CSV


def test_a_model_a_site_cannot_run_is_reported_and_the_others_still_evaluated(run: Run) -> None:
    blocks = {m: copy.deepcopy(b) for m, b in run.models["merged"].blocks.items()}
    blocks["labs"].preprocessing = {**blocks["labs"].preprocessing, "fit": {"variables": "broken"}}
    models = evaluable_models(blocks, LegoMerge(blocks).eval(), None)
    results = run.site.evaluate(models, run.task)
    assert set(results) == {"block:clin"}
    assert set(run.site.evaluation_errors) == {"block:labs", "merge"}
    assert all(reason.split(":")[0].endswith("Error") for reason in run.site.evaluation_errors.values())
    reply = EvaluateReply.from_payload(EvaluateReply(results, run.site.evaluation_errors).to_payload())
    assert reply.errors == run.site.evaluation_errors and reply.results == results


def test_values_outside_the_models_categories_are_reported(tmp_path: Path) -> None:
    train = pd.DataFrame({"stage": ["I", "II", "I", "III"], "age": [50.0, 60.0, 70.0, 65.0]}, index=list("abcd"))
    preprocessor = TabularPreprocessor()
    preprocessor.fit(ModalityData("clin", "tabular", "train.csv", table=train), list("abcd"))
    new = pd.DataFrame({"stage": ["I", "IV", "IV", None], "age": [55.0, 61.0, 62.0, 70.0]}, index=list("wxyz"))
    (warning,) = modality_kind("tabular").prediction_warnings(
        ModalityData("clin", "tabular", "new.csv", table=new), preprocessor.fitted
    )
    assert re.search(r"new\.csv: column 'stage': 2 patients hold values .*'IV'", warning)
    tensors, _ = preprocessor.transform(ModalityData("clin", "tabular", "new.csv", table=new), list("wxyz"))
    assert tensors["x"][1, 1:].abs().sum() == 0  # encoded as none of the categories


def test_survival_columns_name_the_time_unit_and_stay_distinct() -> None:
    assert survival_columns(SurvivalTask((365.0, 730.25), time_unit="days")) == [
        "survival_at_365_days",
        "survival_at_730.2_days",
    ]
    assert survival_columns(SurvivalTask((1.5,))) == ["survival_at_1.5"]
    close = survival_columns(SurvivalTask((100.01, 100.02), time_unit="months"))
    assert close == ["survival_at_100.01_months", "survival_at_100.02_months"]  # 4 digits would collide
