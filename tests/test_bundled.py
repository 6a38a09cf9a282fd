"""Bundled real data: no leakage, patient-level ids, the documented cohort sizes."""

from __future__ import annotations

from importlib.resources import files

import pandas as pd
import pytest

from fedlego.common.data.bundled import load_dataset, load_pbc, load_tcga_acc

FORBIDDEN = {
    "vital_status",
    "days_to_death",
    "days_to_last_followup",
    "date_of_initial_pathologic_diagnosis",
    "patientID",
}


@pytest.fixture(scope="module")
def acc():
    return load_tcga_acc()


@pytest.fixture(scope="module")
def pbc_survival():
    return load_pbc()


def _raw_clinical_columns() -> list[str]:
    path = files("fedlego.common.data") / "bundled" / "tcga-acc" / "clinical.csv.gz"
    with path.open("rb") as handle:
        return list(pd.read_csv(handle, compression="gzip", nrows=1).columns)


def test_tcga_clinical_has_no_leakage_columns(acc):
    raw = _raw_clinical_columns()
    derived = set(raw[raw.index("C1A.C1B") :])
    assert "genome_doublings" in derived and "ADS" in derived
    columns = set(acc.modalities["clinical"].table.columns)
    assert not columns & FORBIDDEN
    assert not columns & derived
    assert {"years_to_birth", "gender", "pathologic_stage"} <= columns


def test_tcga_ids_are_patient_barcodes(acc):
    for modality in acc.modalities.values():
        assert modality.kind == "tabular"
        assert modality.table.index.name == "id"
        assert modality.table.index.is_unique
        assert all(len(i) == 12 and i.startswith("TCGA-") for i in modality.table.index)
    assert set(acc.patient_ids()) == set(acc.labels.patient_ids())


def test_tcga_cohort_and_modality_counts(acc):
    labels = acc.labels.table
    assert 88 <= len(labels) <= 92
    assert (labels["time"] > 0).all()
    assert 30 <= labels["event"].sum() <= 34
    counts = {name: len(m.patient_ids()) for name, m in acc.modalities.items()}
    expected = {"clinical": 91, "rna": 79, "cnv": 90, "mutation": 90, "mirna": 80, "protein": 46}
    for name, count in expected.items():
        assert count - 3 <= counts[name] <= count
    assert 74 <= len(acc.complete_case_ids(["clinical", "rna", "mirna", "cnv"])) <= 77


def test_tcga_omics_transforms(acc):
    rna = acc.modalities["rna"].table
    assert rna.max().max() < 30  # log2(x + 1) applied
    assert set(pd.unique(acc.modalities["cnv"].table.to_numpy().ravel())) <= {-2, -1, 0, 1, 2}
    stage = acc.modalities["clinical"].table["pathologic_stage"].dropna()
    assert set(stage) <= {1.0, 2.0, 3.0, 4.0}


def test_tcga_modality_selection():
    data = load_tcga_acc(["clinical", "rna"])
    assert list(data.modalities) == ["clinical", "rna"]
    with pytest.raises(ValueError, match="valid"):
        load_tcga_acc(["methylation"])


def test_pbc_landmark_cohort_matches_readme(pbc_survival):
    labels = pbc_survival.labels.table
    assert len(labels) == 290
    assert labels["event"].sum() == 103
    assert (labels["time"] > 0).all()
    assert set(pbc_survival.patient_ids()) == set(labels.index)


def test_pbc_labs_stop_at_landmark(pbc_survival):
    labs = pbc_survival.modalities["labs"]
    assert labs.kind == "timeseries"
    assert list(labs.table.columns) == ["id", "time", "variable", "value"]
    assert labs.table["time"].max() <= 365
    assert labs.table["value"].notna().all()
    assert set(labs.table["variable"]) == {
        "bili",
        "chol",
        "albumin",
        "alk.phos",
        "ast",
        "platelet",
        "protime",
    }
    baseline = pbc_survival.modalities["baseline"].table
    assert list(baseline.columns) == [
        "age",
        "sex",
        "trt",
        "ascites",
        "hepato",
        "spiders",
        "edema",
        "stage",
    ]


def test_pbc_other_landmark_drops_late_visits():
    data = load_pbc(landmark_days=730.0)
    assert data.modalities["labs"].table["time"].max() <= 730
    assert len(data.labels.table) < 290


def test_pbc_binary_excludes_early_censored(pbc_survival):
    binary = load_pbc("binary").labels.table
    surv = pbc_survival.labels.table
    horizon = 730.0
    early_censored = surv[(surv["event"] == 0) & (surv["time"] <= horizon)].index
    assert len(early_censored) > 0
    assert not set(early_censored) & set(binary.index)
    positives = surv[(surv["event"] == 1) & (surv["time"] <= horizon)].index
    assert set(binary.index[binary["label"] == 1]) == set(positives)
    assert len(binary) == 277 and binary["label"].sum() == 37


def test_load_dataset_dispatch():
    assert load_dataset("pbc").name == "pbc"
    assert load_dataset("synthetic", n_patients=20).name == "synthetic"
    with pytest.raises(ValueError, match="tcga-acc"):
        load_dataset("mimic")
