"""The development panel: ten real survival cohorts from SurvSet, each cut into modalities by
meaning and written as a site folder through the public format, so that it takes the same path as
a user's ``--data`` folder.

    python bench/panel.py export --out runs/panel            # one site folder per cohort
    python bench/panel.py export --out runs/panel --cohorts GBSG2 Pbc3

SurvSet (Drysdale 2022; a bench/dev dependency, never a runtime one) ships the data inside its
wheel, so nothing is downloaded at run time. Its columns are ``pid``, ``time``, ``event``, then
``num_*`` (numeric) and ``fac_*`` (categorical) features. Each cohort's modalities below are
defined by what the columns mean (demographics, history, vital signs, labs, tumour, genes), from
the cohort's documentation, never by how well they predict. Columns that leak the outcome are left
out and named in ``LEFT_OUT`` with the reason. Other cohorts are kept for independent evaluation:
use exactly these ten for development.

Wide gene panels stay wide here; filtering (by variance on training patients only) is the
preprocessing's business, not the export's.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

GENES = re.compile(r"^num_HS_|^num_[A-Z0-9][A-Z0-9_]*$")
"""Gene-expression columns: ``num_HS_<symbol>`` (survJamda cohorts) or upper-case symbols (ovarian)."""


SURVSET_MISSING = "missing"
"""SurvSet's marker of a missing categorical value; written as an empty cell (the public format's)."""


@dataclass(frozen=True)
class Cohort:
    """One panel cohort: its modalities as column lists (or a gene rule) and what is left out."""

    modalities: dict[str, tuple[str, ...] | str]
    """Modality name -> its columns, or ``"genes"`` for every gene-expression column."""
    about: str
    """What the cohort is, in a line."""


LEFT_OUT: dict[str, dict[str, str]] = {
    "flchain": {
        "fac_chapter": "cause of death (ICD chapter): known only for patients who died, so it leaks the outcome",
        "fac_sample_yr": "the same year as num_sample_yr, as a category",
    },
}
"""Per cohort, columns that are not features, and why."""

PANEL: dict[str, Cohort] = {
    "gse1992": Cohort(
        {
            "clinical": ("num_age", "num_size", "fac_er_positive", "fac_node_status", "fac_grade", "fac_size"),
            "genes": "genes",
        },
        "breast cancer, 124 patients: tumour and patient features and a genome-wide expression profile",
    ),
    "gse3143": Cohort(
        {"clinical": ("num_erlev", "fac_erlev"), "genes": "genes"},
        "breast cancer, 158 patients: oestrogen receptor level and a genome-wide expression profile",
    ),
    "dataOvarian1": Cohort(
        {"clinical": ("fac_group", "fac_debulk"), "genes": "genes"},
        "ovarian cancer, 912 patients: study group and debulking, and a 158-gene expression panel",
    ),
    "rhc": Cohort(
        {
            "demographics": ("num_age", "num_edu", "fac_sex", "fac_race", "fac_income", "fac_ninsclas"),
            "history": (
                "fac_amihx",
                "fac_cardiohx",
                "fac_chfhx",
                "fac_chrpulhx",
                "fac_dementhx",
                "fac_gibledhx",
                "fac_immunhx",
                "fac_liverhx",
                "fac_malighx",
                "fac_psychhx",
                "fac_renalhx",
                "fac_transhx",
                "fac_ca",
                "num_adld3p",
            ),
            "admission": (
                "fac_cat1",
                "fac_cat2",
                "fac_resp",
                "fac_card",
                "fac_neuro",
                "fac_gastr",
                "fac_renal",
                "fac_meta",
                "fac_hema",
                "fac_seps",
                "fac_trauma",
                "fac_ortho",
                "fac_dnr1",
                "fac_swang1",
            ),
            "physiology": (
                "num_aps1",
                "num_scoma1",
                "num_surv2md1",
                "num_meanbp1",
                "num_wblc1",
                "num_hrt1",
                "num_resp1",
                "num_temp1",
                "num_pafi1",
                "num_alb1",
                "num_hema1",
                "num_bili1",
                "num_crea1",
                "num_sod1",
                "num_pot1",
                "num_paco21",
                "num_ph1",
                "num_wtkilo1",
                "num_urin1",
            ),
        },
        "critically ill adults (SUPPORT, right heart catheterisation), 5,735 patients",
    ),
    "flchain": Cohort(
        {
            "demographics": ("num_age", "fac_sex", "num_sample_yr"),
            "labs": ("num_kappa", "num_lambda", "num_flc_grp", "num_creatinine", "fac_mgus"),
        },
        "Olmsted County residents, serum free light chains, 7,874 patients",
    ),
    "smarto": Cohort(
        {
            "demographics": (
                "num_age",
                "fac_sex",
                "num_length",
                "num_weight",
                "num_bmi",
                "fac_smoking",
                "fac_alcohol",
                "num_packyrs",
            ),
            "history": ("fac_diabetes", "fac_cerebral", "fac_aaa", "fac_periph", "fac_stenosis"),
            "measurements": (
                "num_systbp",
                "num_diastbp",
                "num_systh",
                "num_diasth",
                "num_chol",
                "num_hdl",
                "num_ldl",
                "num_trig",
                "num_homoc",
                "num_glut",
                "num_creat",
                "num_imt",
                "fac_albumin",
            ),
        },
        "patients with vascular disease (SMART), 3,873 patients",
    ),
    "whas500": Cohort(
        {
            "demographics": ("num_age", "fac_gender", "num_bmi"),
            "history": (
                "fac_cvd",
                "fac_afb",
                "fac_sho",
                "fac_chf",
                "fac_av3",
                "fac_miord",
                "fac_mitype",
                "fac_year",
                "num_week",
                "num_los",
            ),
            "vitals": ("num_hr", "num_sysbp", "num_diasbp"),
        },
        "acute myocardial infarction (Worcester Heart Attack Study), 461 patients",
    ),
    "GBSG2": Cohort(
        {
            "patient": ("num_age", "fac_menostat", "fac_horTh"),
            "tumour": ("num_tsize", "num_pnodes", "fac_tgrade", "num_progrec", "num_estrec"),
        },
        "node-positive breast cancer (German Breast Cancer Study Group 2), 686 patients",
    ),
    "actg": Cohort(
        {
            "demographics": ("num_age", "fac_sex", "fac_raceth", "fac_ivdrug", "fac_hemophil"),
            "clinical": ("num_karnof", "num_cd4", "num_priorzdv", "fac_tx", "fac_txgrp", "fac_strat2"),
        },
        "HIV (AIDS Clinical Trials Group 320), 1,151 patients",
    ),
    "Pbc3": Cohort(
        {
            "patient": ("num_age", "fac_sex", "num_weight", "fac_unit", "fac_tment"),
            "history": ("fac_stage", "fac_gibleed"),
            "labs": ("num_crea", "num_alb", "num_bili", "num_alkph", "num_asptr"),
        },
        "primary biliary cirrhosis (PBC3 trial), 349 patients",
    ),
}
"""The ten development cohorts, their modalities by meaning."""


def load_cohort(name: str, loader: Callable[[str], pd.DataFrame] | None = None) -> pd.DataFrame:
    """The cohort's table as SurvSet ships it (``pid``, ``time``, ``event``, features)."""
    if loader is None:
        from SurvSet.data import SurvLoader

        return SurvLoader().load_dataset(ds_name=name)["df"]
    return loader(name)


def modality_columns(cohort: Cohort, columns: Sequence[str]) -> dict[str, list[str]]:
    """Each modality's columns in ``columns``; an error for a named column the table lacks."""
    chosen: dict[str, list[str]] = {}
    for modality, rule in cohort.modalities.items():
        if rule == "genes":
            chosen[modality] = [c for c in columns if GENES.match(c)]
        else:
            missing = [c for c in rule if c not in columns]
            if missing:
                raise ValueError(f"modality {modality!r}: columns {missing} not in the cohort")
            chosen[modality] = list(rule)
    return chosen


def unassigned_columns(name: str, columns: Sequence[str]) -> list[str]:
    """Feature columns of the cohort that no modality takes and ``LEFT_OUT`` does not explain."""
    taken = {c for chosen in modality_columns(PANEL[name], columns).values() for c in chosen}
    features = [c for c in columns if c.startswith(("num_", "fac_"))]
    return [c for c in features if c not in taken and c not in LEFT_OUT.get(name, {})]


def export_cohort(name: str, table: pd.DataFrame, out: Path) -> Path:
    """``out/<name>``: labels.csv, one CSV per modality (id first; ``num_``/``fac_`` prefixes kept)
    and site.json, the layout a hospital writes by hand (docs/data-formats.md). Roles come from the
    benchmark's splits, so no split.csv."""
    cohort = PANEL[name]
    unassigned = unassigned_columns(name, list(table.columns))
    if unassigned:
        raise ValueError(f"{name}: columns {unassigned} belong to no modality and are not LEFT_OUT with a reason")
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    ids = table["pid"].astype(str).map(lambda p: f"{name}-{p}")
    labels = pd.DataFrame({"id": ids, "time": table["time"].astype(float), "event": table["event"].astype(int)})
    labels = labels[labels["time"] > 0]
    labels.to_csv(folder / "labels.csv", index=False)
    entries = {}
    for modality, columns in modality_columns(cohort, list(table.columns)).items():
        frame = table[columns].replace(SURVSET_MISSING, pd.NA)
        frame.insert(0, "id", ids)
        frame.to_csv(folder / f"{modality}.csv", index=False)
        entries[modality] = {"kind": "tabular", "path": f"{modality}.csv"}
    manifest = {"name": name, "task": "survival", "labels": "labels.csv", "modalities": entries}
    (folder / "site.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write one site folder per panel cohort")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--cohorts", nargs="+", default=list(PANEL), choices=list(PANEL))
    args = parser.parse_args(argv)
    for name in args.cohorts:
        folder = export_cohort(name, load_cohort(name), args.out)
        print(f"{folder}: {', '.join(PANEL[name].modalities)} ({PANEL[name].about})")


if __name__ == "__main__":
    main()
