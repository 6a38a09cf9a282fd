"""Loaders for the real data sets vendored in ``bundled/`` (TCGA-ACC and Mayo PBC).

Everything is read offline from the package (``importlib.resources``); provenance, licences and
the leakage rules applied here are documented in ``bundled/README.md``.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import numpy as np
import pandas as pd

from .dataset import Labels, ModalityData, MultimodalDataset
from .synthetic import make_synthetic

DATASET_NAMES: tuple[str, ...] = ("tcga-acc", "pbc", "synthetic")

# ---------------------------------------------------------------------------------------------
# TCGA-ACC
# ---------------------------------------------------------------------------------------------

TCGA_ASSAYS: dict[str, str] = {
    "rna": "RNASeq2GeneNorm",
    "cnv": "gistict",
    "mutation": "Mutations",
    "mirna": "miRNASeqGene",
    "protein": "RPPAArray",
}
"""Modality name -> assay file stem (``tcga-acc/<stem>.csv.gz``)."""

TCGA_MODALITIES: tuple[str, ...] = ("clinical", *TCGA_ASSAYS)
TCGA_LOG_ASSAYS: frozenset[str] = frozenset({"rna", "mirna"})
"""Assays stored as counts / normalised expression: ``log2(x + 1)`` is applied on loading."""

TCGA_CLINICAL_FEATURES: tuple[str, ...] = (
    "years_to_birth",
    "gender",
    "pathologic_stage",
    "pathology_T_stage",
    "pathology_N_stage",
    "radiation_therapy",
    "residual_tumor",
    "number_of_lymph_nodes",
    "race",
    "Histology",
)
"""The only clinical columns exposed: baseline features known at diagnosis (allow-list)."""

TCGA_ORDINAL_MAPS: dict[str, dict[str, float]] = {
    "pathologic_stage": {"stage i": 1.0, "stage ii": 2.0, "stage iii": 3.0, "stage iv": 4.0},
    "pathology_T_stage": {"t1": 1.0, "t2": 2.0, "t3": 3.0, "t4": 4.0},
    "pathology_N_stage": {"n0": 0.0, "n1": 1.0},
}

TCGA_LEAKAGE_COLUMNS: tuple[str, ...] = (
    "patientID",
    "vital_status",
    "days_to_death",
    "days_to_last_followup",
    "date_of_initial_pathologic_diagnosis",
    "C1A.C1B",
    "mRNA_K4",
    "MethyLevel",
    "miRNA.cluster",
    "SCNA.cluster",
    "protein.cluster",
    "COC",
    "OncoSign",
    "purity",
    "ploidy",
    "genome_doublings",
    "ADS",
)
"""Columns of ``clinical.csv.gz`` that must never become features (outcome or omics-derived)."""

PRIMARY_TUMOUR = "01"

TCGA_DESCRIPTION = (
    "TCGA adrenocortical carcinoma (miniACC of Bioconductor MultiAssayExperiment 1.24.0; Zheng "
    "et al., Cancer Cell 2016; open-access TCGA data). Overall survival (time = days_to_death "
    "else days_to_last_followup, event = vital_status). Primary-tumour samples only, keyed by "
    "12-character patient barcode; RNA and miRNA are log2(x+1); clinical = baseline features "
    "only (no outcome columns, no omics-derived cluster labels)."
)

# ---------------------------------------------------------------------------------------------
# PBC
# ---------------------------------------------------------------------------------------------

PBC_BASELINE_FEATURES: tuple[str, ...] = (
    "age",
    "sex",
    "trt",
    "ascites",
    "hepato",
    "spiders",
    "edema",
    "stage",
)
PBC_LAB_VARIABLES: tuple[str, ...] = (
    "bili",
    "chol",
    "albumin",
    "alk.phos",
    "ast",
    "platelet",
    "protime",
)
PBC_DEATH = 2
"""``status`` code of death in ``pbc.csv`` (0 censored, 1 transplant = censored here)."""


def _bundled_csv(relative: str, **read_options: Any) -> pd.DataFrame:
    """Read ``bundled/<relative>`` from the installed package."""
    resource = files("fedlego.common.data") / "bundled" / relative
    with resource.open("rb") as handle:
        return pd.read_csv(handle, compression="gzip", **read_options)


def _source(relative: str) -> str:
    return f"fedlego.common.data/bundled/{relative}"


def _tcga_labels(clinical: pd.DataFrame) -> Labels:
    """Overall survival labels; patients with missing or non-positive time are dropped."""
    time = clinical["days_to_death"].fillna(clinical["days_to_last_followup"]).astype(float)
    table = pd.DataFrame({"time": time, "event": clinical["vital_status"].astype(int)})
    table = table[table["time"].notna() & (table["time"] > 0)]
    return Labels("survival", table, _source("tcga-acc/clinical.csv.gz"), time_unit="days")


def _tcga_clinical_features(clinical: pd.DataFrame) -> pd.DataFrame:
    """Allow-listed baseline features; ordinal stages become numbers, nominal stay strings."""
    table = clinical.loc[:, list(TCGA_CLINICAL_FEATURES)].copy()
    for column, mapping in TCGA_ORDINAL_MAPS.items():
        table[column] = table[column].map(mapping).astype(float)
    table["years_to_birth"] = table["years_to_birth"].astype(float)
    table["number_of_lymph_nodes"] = table["number_of_lymph_nodes"].astype(float)
    return table


def _read_tcga_clinical() -> pd.DataFrame:
    clinical = _bundled_csv("tcga-acc/clinical.csv.gz", index_col=0)
    clinical.index = clinical.index.astype(str)
    clinical.index.name = "id"
    return clinical


def _tcga_assay(modality: str) -> pd.DataFrame:
    """One assay keyed by patient: primary-tumour samples only, first sorted sample per patient."""
    raw = _bundled_csv(f"tcga-acc/{TCGA_ASSAYS[modality]}.csv.gz", index_col=0)
    samples = sorted(s for s in map(str, raw.index) if s[13:15] == PRIMARY_TUMOUR)
    first: dict[str, str] = {}
    for sample in samples:
        first.setdefault(sample[:12], sample)
    table = raw.loc[list(first.values())].astype(float)
    table.index = pd.Index(list(first), name="id")
    if modality in TCGA_LOG_ASSAYS:
        table = np.log2(table + 1.0)
    return table.sort_index()


def load_tcga_acc(modalities: list[str] | None = None) -> MultimodalDataset:
    """TCGA-ACC overall survival with tabular modalities keyed by patient barcode.

    ``modalities`` picks among ``clinical, rna, cnv, mutation, mirna, protein`` (default: all).
    Only labelled patients (positive follow-up time) are kept in every modality table.
    """
    names = list(TCGA_MODALITIES) if modalities is None else list(modalities)
    unknown = sorted(set(names) - set(TCGA_MODALITIES))
    if unknown:
        raise ValueError(f"unknown TCGA-ACC modalities {unknown}; valid: {list(TCGA_MODALITIES)}")
    clinical = _read_tcga_clinical()
    labels = _tcga_labels(clinical)
    labelled = set(labels.table.index)
    data: dict[str, ModalityData] = {}
    for name in names:
        if name == "clinical":
            table = _tcga_clinical_features(clinical)
            source = _source("tcga-acc/clinical.csv.gz")
        else:
            table = _tcga_assay(name)
            source = _source(f"tcga-acc/{TCGA_ASSAYS[name]}.csv.gz")
        table = table[table.index.isin(labelled)]
        data[name] = ModalityData(name, "tabular", source, table=table)
    return MultimodalDataset("tcga-acc", labels, data, description=TCGA_DESCRIPTION)


def _pbc_cohort(landmark_days: float) -> pd.DataFrame:
    """Trial patients (non-missing ``trt``) still followed after the landmark, indexed by id."""
    pbc = _bundled_csv("pbc/pbc.csv.gz")
    trial = pbc[pbc["trt"].notna()].copy()
    trial.index = pd.Index(trial["id"].astype(int).astype(str), name="id")
    return trial[trial["time"] > landmark_days]


def _pbc_labels(cohort: pd.DataFrame, task: str, landmark: float, horizon: float) -> Labels:
    """Survival from the landmark, or the binary death-within-horizon label."""
    death = cohort["status"] == PBC_DEATH
    source = _source("pbc/pbc.csv.gz")
    if task == "survival":
        table = pd.DataFrame(
            {
                "time": (cohort["time"] - landmark).astype(float),
                "event": death.astype(int),
            }
        )
        return Labels("survival", table, source, time_unit="days")
    end = landmark + horizon
    positive = death & (cohort["time"] <= end)
    known = positive | (cohort["time"] > end)
    table = pd.DataFrame({"label": positive[known].astype(int)})
    return Labels("binary", table, source)


def _pbc_labs(cohort: pd.DataFrame, landmark: float) -> pd.DataFrame:
    """Long-format labs of the cohort: visits up to the landmark and the pbc.csv follow-up."""
    seq = _bundled_csv("pbc/pbcseq.csv.gz")
    seq["id"] = seq["id"].astype(int).astype(str)
    seq = seq[seq["id"].isin(set(cohort.index))]
    end = seq["id"].map(cohort["time"])
    seq = seq[(seq["day"] <= landmark) & (seq["day"] <= end)]
    long = seq.melt(
        id_vars=["id", "day"],
        value_vars=list(PBC_LAB_VARIABLES),
        var_name="variable",
        value_name="value",
    ).rename(columns={"day": "time"})
    long = long.dropna(subset=["value"]).astype({"time": float, "value": float})
    return long.sort_values(["id", "time", "variable"]).reset_index(drop=True)


def _pbc_description(task: str, landmark: float, horizon: float) -> str:
    outcome = (
        f"death within {horizon:g} days after the landmark (censored earlier: excluded)"
        if task == "binary"
        else "overall survival from the landmark (death; transplant censored)"
    )
    return (
        "Mayo Clinic PBC trial (R survival package pbc/pbcseq, LGPL>=2) with a landmark at day "
        f"{landmark:g}: trial patients still followed then, labs of visits up to the landmark "
        f"only; task {task}: {outcome}."
    )


def load_pbc(task: str = "survival", landmark_days: float = 365.0, horizon_days: float = 730.0) -> MultimodalDataset:
    """Mayo PBC trial as a landmark problem with ``baseline`` (tabular) and ``labs`` (timeseries).

    Cohort: the 312 trial patients still followed at ``landmark_days``. Outcome from ``pbc.csv``
    (death = status 2, transplant = censored). ``task="survival"``: time counted from the
    landmark. ``task="binary"``: 1 = death in (landmark, landmark + horizon], 0 = followed beyond
    landmark + horizon; patients censored earlier are excluded. Labs: visits with
    ``day <= landmark_days`` only (no outcome leakage through the visit count).
    """
    if task not in ("survival", "binary"):
        raise ValueError(f"unknown PBC task {task!r}; valid: ['survival', 'binary']")
    if landmark_days < 0 or horizon_days <= 0:
        raise ValueError("landmark_days must be >= 0 and horizon_days > 0")
    cohort = _pbc_cohort(landmark_days)
    labels = _pbc_labels(cohort, task, landmark_days, horizon_days)
    kept = cohort.loc[labels.table.index]
    baseline = kept.loc[:, list(PBC_BASELINE_FEATURES)].copy()
    labs = _pbc_labs(kept, landmark_days)
    description = _pbc_description(task, landmark_days, horizon_days)
    return MultimodalDataset(
        "pbc",
        labels,
        {
            "baseline": ModalityData("baseline", "tabular", _source("pbc/pbc.csv.gz"), table=baseline),
            "labs": ModalityData("labs", "timeseries", _source("pbc/pbcseq.csv.gz"), table=labs),
        },
        description=description,
    )


def load_dataset(name: str, **options: Any) -> MultimodalDataset:
    """Load a named data set: ``tcga-acc``, ``pbc`` or ``synthetic`` (options go to its loader)."""
    if name == "tcga-acc":
        return load_tcga_acc(**options)
    if name == "pbc":
        return load_pbc(**options)
    if name == "synthetic":
        return make_synthetic(**options)
    raise ValueError(f"unknown dataset {name!r}; valid: {list(DATASET_NAMES)}")
