"""A user's own site folders in every mode: `fedlego check`, `centralized --data`, `simulate
--site-folders` and `--data`; results name the folders and their hashes, never a bundled data set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedlego.cli import main
from fedlego.common.config import RunConfig
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.sitefolder import folder_digest, read_site_folder
from fedlego.common.packaging import parse_model_package
from fedlego.inprocess import InProcessTransport
from fedlego.launcher import processes_with_home
from fedlego.server.orchestrator import Federation

TINY = ["latent-channels=8", "latent-dim=16", "block-epochs=3", "patience=2", "encoder-width=16"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Unimodal and paired site folders of a binary synthetic cohort, and the pooled cohort."""
    root = tmp_path_factory.mktemp("own")
    common = ["--dataset", "synthetic", "--set", "synthetic-patients=150", "synthetic-modalities=2"]
    assert main(["export-sites", *common, "--out", str(root / "sites")]) == 0
    assert main(["export-sites", *common, "--layout", "pooled", "--out", str(root / "pooled")]) == 0
    sites = {p.name: p for p in sorted((root / "sites").iterdir())}
    return {**sites, "pooled": root / "pooled" / "pooled"}


def test_check_prints_counts_per_modality_and_role_and_unused_labels(folders, capsys):
    folder = folders["paired-0"]
    labels = folder / "labels.csv"
    labels.write_text(labels.read_text() + "GHOST-1,100.0,1\n")  # a labelled patient with no data
    assert main(["check", str(folder)]) == 0
    printed = capsys.readouterr().out
    data = read_site_folder(folder)
    for modality, counts in data.summary()["modalities"].items():
        assert f"{counts['train']} train" in printed and modality in printed
    assert "1 labelled patients hold no modality and are not used: GHOST-1" in printed
    assert data.sha256 in printed


def test_check_names_the_file_at_fault(folders, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "site.json").write_text('{"name": "x", "task": "survival", "labels": "labels.csv", "modalities": {}}')
    assert main(["check", str(broken)]) == 2
    assert "site.json" in capsys.readouterr().err


def test_the_folder_digest_changes_with_any_byte(folders, tmp_path):
    folder = folders["tabular_0"]
    before = folder_digest(folder)
    assert folder_digest(folder) == before
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in folder.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    assert folder_digest(copy) == before  # content, not location
    labels = copy / "labels.csv"
    labels.write_bytes(labels.read_bytes().replace(b"1\n", b"0\n", 1))
    assert folder_digest(copy) != before


def test_centralized_runs_on_a_pooled_site_folder(folders, tmp_path, capsys):
    out = tmp_path / "central"
    args = ["centralized", "--data", str(folders["pooled"]), "--folds", "2", "--set", *TINY, "--out", str(out)]
    assert main(args) == 0
    document = json.loads((out / "results.json").read_text())
    assert document["dataset"]["name"] == "pooled"
    assert document["dataset"]["source"] == {
        "source": "site-folder",
        "path": str(folders["pooled"].resolve()),
        "sha256": folder_digest(folders["pooled"]),
    }
    assert {"merge", "fuse", "ensemble"} <= set(document["summary"]) and len(document["folds"]) == 2
    assert document["config"]["dataset"] == "pooled" and "tcga-acc" not in json.dumps(document)


def _in_process(config: dict, n_sites: int):
    return Federation(InProcessTransport(config, n_sites), RunConfig.from_flat(config), log=lambda _: None).run()


def test_a_federation_of_site_folders_names_each_folder_and_its_hash(folders):
    names = ["paired-0", "tabular_0", "timeseries_1"]
    config = {"site-folders": ",".join(str(folders[n]) for n in names), "block-rounds": 1, "fuse-rounds": 1}
    config |= {k: float(v) if "." in v else int(v) for k, v in (item.split("=") for item in TINY)}
    results = _in_process(config, len(names))
    assert results.status == "completed" and sorted(results.sites) == names
    for name in names:
        assert results.data[name] == {"source": "site-folder", "name": name, "sha256": folder_digest(folders[name])}
    assert "bundled" not in json.dumps(results.data)


def test_a_pooled_folder_split_into_simulated_sites(folders):
    config = {"data": str(folders["pooled"]), "block-rounds": 0, "fuse-rounds": 0, "latent-channels": 8}
    results = _in_process(config, 3)
    assert results.status == "completed" and len(results.sites) == 3
    assert {d["sha256"] for d in results.data.values()} == {folder_digest(folders["pooled"])}


def test_data_and_site_folders_exclude_each_other():
    with pytest.raises(ValueError, match="exclude each other"):
        RunConfig.from_flat({"data": "/a", "site-folders": "/b,/c"})


@pytest.mark.timeout(600)
def test_simulate_on_site_folders_end_to_end_with_a_plugin_encoder(folders, tmp_path, capsys):
    """Flower's simulation engine, one process per site: the plugin encoder is found through its
    entry point in every process (sites and coordinator)."""
    out = tmp_path / "sim"
    copies = {}
    for name in ("paired-0", "tabular_0", "timeseries_1"):
        copies[name] = tmp_path / "sites" / name
        shutil.copytree(folders[name], copies[name])
        if name != "timeseries_1":
            manifest = json.loads((copies[name] / "site.json").read_text())
            manifest["modalities"]["tabular_0"]["encoder"] = {"name": "tabular-transformer", "kwargs": {"width": 16}}
            (copies[name] / "site.json").write_text(json.dumps(manifest))
    sites = [str(copies[n]) for n in ("paired-0", "tabular_0", "timeseries_1")]
    code = main(
        [
            "simulate",
            "--site-folders",
            *sites,
            "--fuse-rounds",
            "1",
            "--block-rounds",
            "1",
            "--set",
            *TINY,
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "3 site folders, 3 sites" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and set(results["data"]) == {"paired-0", "tabular_0", "timeseries_1"}
    report = (out / "report.html").read_text()
    assert "tcga-acc" not in report and "bundled" not in report and "site folder paired-0" in report
    merged = parse_model_package((out / "packages" / "merged.pb").read_bytes())
    tabular = next(b for b in merged.blocks if b.modality == "tabular_0")
    assert json.loads(tabular.architecture_json)["encoder"]["plugin"]["distribution"] == "fedlego-tabular-transformer"
    assert not results["refused"] and not results["failures"]
    assert processes_with_home(out.resolve() / ".flower" / "home") == []


def test_the_roles_a_site_reports_at_start_are_the_ones_the_run_uses(folders, tmp_path):
    """Without split.csv roles are hashed; `fedlego site` (validate_site_folder) and the ClientApp
    must hash them alike, whatever the run's seed."""
    from fedlego.deploy import validate_site_folder

    folder = tmp_path / "hashed"
    shutil.copytree(folders["paired-0"], folder)
    (folder / "split.csv").unlink()
    printed = validate_site_folder(folder).summary()["modalities"]
    config = {"seed": 7, "block-rounds": 0, "fuse-rounds": 0, "latent-channels": 8, "block-epochs": 1, "min-cell": 1}
    transport = InProcessTransport(config, 1, node_configs={0: {"data-dir": str(folder), "min-cell": 1}})
    results = Federation(transport, RunConfig.from_flat(config), log=lambda _: None).run()
    site = results.sites["paired-0"]
    for index, modality in enumerate(site["modalities"]):
        assert site["n_train"][index] == printed[modality]["train"]
        assert site["n_test"][index] == printed[modality]["test"]


def test_an_exported_bundled_cohort_gives_the_bundled_results_exactly(tmp_path):
    """export-sites writes the preset's preprocessing into site.json, so the same cohort as a
    user's folder goes through the same folds, preprocessing and models."""
    assert main(["export-sites", "--dataset", "pbc", "--layout", "pooled", "--out", str(tmp_path / "pbc")]) == 0
    manifest = json.loads((tmp_path / "pbc" / "pooled" / "site.json").read_text())
    assert manifest["modalities"]["labs"]["preprocessing"] == {"log_transform": True}
    common = ["--folds", "2", "--set", *TINY]
    assert main(["centralized", "--data", str(tmp_path / "pbc" / "pooled"), *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["centralized", "--dataset", "pbc", *common, "--out", str(tmp_path / "b")]) == 0
    own, bundled = (json.loads((tmp_path / x / "results.json").read_text()) for x in ("a", "b"))
    assert own["summary"] == bundled["summary"]


def test_bad_preprocessing_options_in_site_json_name_the_field(folders, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(folders["tabular_0"], folder)
    manifest = json.loads((folder / "site.json").read_text())
    manifest["modalities"]["tabular_0"]["preprocessing"] = {"no_such_option": 1}
    (folder / "site.json").write_text(json.dumps(manifest))
    with pytest.raises(SiteDataError, match=r"modalities.tabular_0.preprocessing.*no_such_option"):
        read_site_folder(folder)
