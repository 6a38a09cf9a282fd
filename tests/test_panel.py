"""The development panel (bench/panel.py): every panel cohort is cut into modalities by meaning,
every feature column is accounted for, and the export is a site folder a hospital could have
written (it reads and checks like one)."""

from __future__ import annotations

import pandas as pd
import pytest

from fedlego.common.data.sitecheck import check_site_folder
from fedlego_bench.panel import LEFT_OUT, PANEL, export_cohort, load_cohort, modality_columns, unassigned_columns


@pytest.mark.parametrize("name", sorted(PANEL))
def test_every_feature_column_has_a_modality_or_a_reason(name):
    table = load_cohort(name)
    assert unassigned_columns(name, list(table.columns)) == []
    chosen = modality_columns(PANEL[name], list(table.columns))
    assert all(chosen.values()), chosen.keys()
    taken = [c for columns in chosen.values() for c in columns]
    assert len(taken) == len(set(taken)), "a column in two modalities"
    assert not set(taken) & set(LEFT_OUT.get(name, {}))


@pytest.mark.parametrize("name", ["GBSG2", "Pbc3", "smarto"])
def test_an_exported_cohort_is_a_clean_site_folder(name, tmp_path):
    folder = export_cohort(name, load_cohort(name), tmp_path)
    report = check_site_folder(folder)
    assert report.ok, report.errors
    assert set(report.site.dataset.modalities) == set(PANEL[name].modalities)
    labels = pd.read_csv(folder / "labels.csv")
    assert set(labels["event"]) <= {0, 1} and (labels["time"] > 0).all()


def test_a_column_with_no_modality_is_refused(tmp_path):
    table = load_cohort("GBSG2").assign(num_new=1.0)
    with pytest.raises(ValueError, match="num_new"):
        export_cohort("GBSG2", table, tmp_path)


def test_a_quick_panel_run_reads_the_cohort_as_a_site_folder_and_writes_its_page(tmp_path, monkeypatch):
    """One split of one cohort, tiny models: the path, not the science."""
    import json

    from fedlego_bench.panel import main

    monkeypatch.setenv("FEDLEGO_PANEL_DIR", str(tmp_path / "cache"))
    out = str(tmp_path)
    main(["run", "--out", out, "--cohorts", "GBSG2", "--bundled", "--quick", "--bootstrap", "10", "--jobs", "1"])
    import gzip

    with gzip.open(tmp_path / "panel-scores.json.gz", "rt") as stream:
        [record] = json.load(stream)["records"]
    document = json.loads((tmp_path / "panel.json").read_text())
    assert record["dataset"] == "GBSG2" and {"merge", "fuse", "plain-late", "cox-early"} <= set(record["scores"])
    assert "merge - plain-late" in document["summary"]["cohorts"]["GBSG2"]["differences"]
    assert (tmp_path / "cache" / "GBSG2" / "site.json").exists()
    page = (tmp_path / "panel.md").read_text()
    assert "GBSG2: node-positive breast cancer" in page
    assert "| GBSG2 |" in page  # the per-cohort table of key differences


def test_the_derived_cohort_adds_one_modality_of_seeded_noise(tmp_path):
    cohort = PANEL["whas500-noise"]
    first = export_cohort("whas500-noise", load_cohort("whas500-noise"), tmp_path / "a")
    again = export_cohort("whas500-noise", load_cohort("whas500-noise"), tmp_path / "b")
    report = check_site_folder(first)
    assert report.ok, report.errors
    assert set(report.site.dataset.modalities) == {*PANEL["whas500"].modalities, "noise"}
    noise = pd.read_csv(first / "noise.csv")
    assert noise.shape[1] == 1 + cohort.noise_columns
    assert noise.equals(pd.read_csv(again / "noise.csv"))
    assert abs(noise.drop(columns="id").to_numpy().mean()) < 0.1
