"""The development panel: ten real survival cohorts from SurvSet, each cut into modalities by
meaning and written as a site folder through the public format, so that it takes the same path as
a user's ``--data`` folder.

    python bench/panel.py export --out runs/panel            # one site folder per cohort
    python bench/panel.py export --out runs/panel --cohorts GBSG2 Pbc3
    python bench/panel.py run --out docs/benchmarks [--repeats 2] [--repeats-large 1] [--jobs 2]
        [--cohorts ...] [--bootstrap N] [--quick]

``run`` is repeated.py on the panel: each cohort's site folder is read as a user's ``--data`` folder
(``read_site_folder``) and goes through ``repeated.split_record`` (``repeats`` x 5 patient-level
splits, every model and baseline of the headline), each paired difference with its patient
bootstrap and corrected resampled t-interval; then, per difference, a random-effects
(DerSimonian-Laird) mean over the cohorts, from each cohort's mean and corrected-t variance.
Writes ``OUT/panel-scores.json.gz`` (every split's per-patient test scores, first),
``OUT/panel.json`` (the summary) and ``OUT/panel.md``;
``python bench/panel.py render --out OUT [--bootstrap N]`` recomputes the summary and the page from
the stored scores (the patient bootstrap of the large cohorts takes minutes).

SurvSet (Drysdale 2022; a bench/dev dependency, never a runtime one) ships the data inside its
wheel, so nothing is downloaded at run time. Its columns are ``pid``, ``time``, ``event``, then
``num_*`` (numeric) and ``fac_*`` (categorical) features. Each cohort's modalities below are
defined by what the columns mean (demographics, history, vital signs, labs, tumour, genes), from
the cohort's documentation, never by how well they predict. Columns that leak the outcome are left
out and named in ``LEFT_OUT`` with the reason. Other cohorts are kept for independent evaluation:
use exactly these ten for development.

Wide gene panels stay wide here; filtering (by variance on training patients only) is the
preprocessing's business, not the export's.

Beside the ten, ``whas500-noise`` (whas500 plus a modality of seeded pure noise) checks that a
modality without signal does not drag the merge down, and ``run`` also takes the bundled cohorts
(``--bundled``, default TCGA-ACC, PBC, synthetic); neither enters the meta-analysis. Cohorts of
over ``LARGE_COHORT`` patients run ``--repeats-large`` repeats (default 1) to fit the run in an
hour on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedlego_bench.meta import random_effects
from fedlego_bench.repeated import DATASETS, split_record, summarise_dataset
from fedlego_bench.standalone import command_line, write_page

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
    source: str | None = None
    """The SurvSet cohort it is made from, when it is not the cohort of the same name."""
    noise_columns: int = 0
    """Columns of standard normal noise (seeded) added as one more modality, ``noise``: a modality
    that carries no signal, which a merge must not let pull it down."""

    @property
    def derived(self) -> bool:
        """Made from another panel cohort (left out of the meta-analysis: its patients count once)."""
        return self.source is not None


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
PANEL["whas500-noise"] = Cohort(
    PANEL["whas500"].modalities,
    "whas500 with a fourth modality of 8 columns of pure noise",
    source="whas500",
    noise_columns=8,
)
"""The ten development cohorts, their modalities by meaning, and one derived cohort with an
uninformative modality."""
NOISE_SEED = 20261207
"""Seed of the noise modality's values."""


def load_cohort(name: str, loader: Callable[[str], pd.DataFrame] | None = None) -> pd.DataFrame:
    """The cohort's table as SurvSet ships it (``pid``, ``time``, ``event``, features)."""
    source = PANEL[name].source or name if name in PANEL else name
    if loader is None:
        from SurvSet.data import SurvLoader

        return SurvLoader().load_dataset(ds_name=source)["df"]
    return loader(source)


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
    if cohort.noise_columns:
        rng = np.random.default_rng(NOISE_SEED)
        noise = pd.DataFrame(
            rng.standard_normal((len(table), cohort.noise_columns)).round(3),
            columns=[f"num_noise{k + 1}" for k in range(cohort.noise_columns)],
        )
        noise.insert(0, "id", ids.to_numpy())
        noise.to_csv(folder / "noise.csv", index=False)
        entries["noise"] = {"kind": "tabular", "path": "noise.csv"}
    manifest = {"name": name, "task": "survival", "labels": "labels.csv", "modalities": entries}
    (folder / "site.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def panel_folder(name: str) -> Path:
    """The cohort's site folder in this machine's panel cache (written once; every benchmark process
    reads the same files)."""
    cache = Path(os.environ.get("FEDLEGO_PANEL_DIR", Path(tempfile.gettempdir()) / "fedlego-panel"))
    folder = cache / name
    if not (folder / "site.json").exists():
        staging = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=cache.parent if cache.exists() else None))
        export_cohort(name, load_cohort(name), staging)
        cache.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging / name, folder)
        except OSError:  # another process was first: its folder is the same export
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def panel_dataset(name: str):
    """The cohort as the benchmarks load a data set: read from its site folder exactly as a user's
    ``--data`` folder is (``read_site_folder``), with the centralized settings' defaults."""
    from fedlego.common.centralized import CentralizedConfig
    from fedlego.common.data.sitefolder import read_site_folder

    site = read_site_folder(panel_folder(name))
    modalities = sorted(site.dataset.modalities)
    return site.dataset, CentralizedConfig(name, modalities, source=site.source())


LARGE_COHORT = 2000
"""Cohorts with more patients than this run ``--repeats-large`` repeats (their splits take minutes
each, and their intervals are narrow from one repeat)."""


BUNDLED_ABOUT = {
    "tcga-acc": "bundled: adrenocortical carcinoma (TCGA-ACC), omics and clinical",
    "pbc": "bundled: primary biliary cholangitis (Mayo PBC), baseline and labs",
    "synthetic": "bundled: the synthetic four-modality cohort",
}
"""The bundled cohorts run beside the panel (``--bundled``), outside its meta-analysis."""


def about(name: str) -> str:
    """What a cohort of the page is, in a line."""
    return PANEL[name].about if name in PANEL else BUNDLED_ABOUT[name]


def in_meta_analysis(name: str) -> bool:
    """The ten panel cohorts: not the derived one (its patients are whas500's), not the bundled."""
    return name in PANEL and not PANEL[name].derived


def cohort_repeats(name: str, repeats: int, repeats_large: int) -> int:
    """How many repeats of the 5 splits a cohort gets: ``repeats_large`` for a large cohort."""
    if name not in PANEL:
        return repeats
    patients = sum(1 for _ in (panel_folder(name) / "labels.csv").open()) - 1
    return repeats_large if patients > LARGE_COHORT else repeats


def summarise_panel(records: list[dict[str, Any]], bootstrap: int) -> dict[str, Any]:
    """Per cohort, ``repeated.summarise_dataset``; per paired difference, the random-effects mean over
    the cohorts where it has a finite, non-zero corrected-t variance."""
    cohorts = list(dict.fromkeys(r["dataset"] for r in records))
    per_cohort = {n: summarise_dataset([r for r in records if r["dataset"] == n], bootstrap) for n in cohorts}
    pairs = sorted({d for s in per_cohort.values() for d in s["differences"] if not d.startswith(("block:", "plain"))})
    pooled_cohorts = [s for n, s in per_cohort.items() if in_meta_analysis(n)]
    groups = {pair: [s["differences"].get(pair) for s in pooled_cohorts] for pair in pairs}
    groups["block - plain (every modality)"] = [
        row for s in pooled_cohorts for d, row in s["differences"].items() if d.startswith("block:")
    ]
    pooled = {}
    for pair, rows in groups.items():
        estimate = random_effects([(r["mean"], r["t_low"], r["t_high"]) for r in rows if r is not None])
        if estimate is not None:
            pooled[pair] = estimate
    return {"cohorts": per_cohort, "random_effects": pooled}


KEY_DIFFERENCES = (
    "merge - plain-late",
    "merge - ensemble",
    "merge - best-block",
    "merge-validation - best-block",
    "merge-validation - merge",
    "fuse - merge",
    "disjoint-fuse - disjoint-merge",
)
"""The differences the issue's targets name, one column each in the per-cohort table."""


def key_table(cohorts: dict[str, Any]) -> list[str]:
    """Markdown rows: per cohort, the merge's mean and each key difference, mean [corrected t 95 %]."""
    lines = [
        "| cohort | merge (mean ± sd) | " + " | ".join(KEY_DIFFERENCES) + " |",
        "|---|---|" + "---|" * len(KEY_DIFFERENCES),
    ]
    for name, summary in cohorts.items():
        merge = summary["models"]["merge"]
        cells = []
        for key in KEY_DIFFERENCES:
            row = summary["differences"].get(key)
            cells.append("" if row is None else f"{row['mean']:+.3f} [{row['t_low']:+.3f}, {row['t_high']:+.3f}]")
        lines.append(f"| {name} | {merge['mean']:.3f} ± {merge['std']:.3f} | " + " | ".join(cells) + " |")
    return lines


def markdown(document: dict[str, Any]) -> str:
    """The page: the random-effects table, the per-cohort table of key differences, then each
    cohort's differences."""
    repeats = ", ".join(f"{n} {r}" for n, r in document["repeats"].items())
    lines = [
        "# The development panel: repeated CV on ten real cohorts",
        "",
        f"`{document['command']}` ({document['date']}, {document['wall_seconds'] / 60:.1f} min on 2 cores; "
        f"{document['folds']} splits per repeat; repeats: {repeats}).",
        "",
        "## Random-effects mean over the cohorts (DerSimonian-Laird, corrected-t variances)",
        "",
        "| difference | mean [95 % CI] | tau^2 | cohorts |",
        "|---|---|---|---|",
    ]
    for pair, row in document["summary"]["random_effects"].items():
        lines.append(
            f"| {pair} | {row['mean']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}] | {row['tau2']:.2g} | "
            f"{row['cohorts']} |"
        )
    lines += [
        "",
        "## Per cohort: the merge and the key differences, mean [corrected t 95 %]",
        "",
        *key_table(document["summary"]["cohorts"]),
    ]
    for name, summary in document["summary"]["cohorts"].items():
        lines += [
            "",
            f"## {name}: {about(name)}",
            "",
            f"{summary['splits']} splits, {summary['test_patients']:.0f} test patients a split. "
            "Paired differences, mean [corrected t 95 %]:",
            "",
        ]
        for pair, row in summary["differences"].items():
            lines.append(f"- {pair}: {row['mean']:+.3f} [{row['t_low']:+.3f}, {row['t_high']:+.3f}]")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, argv: list[str] | None) -> None:
    """Repeated CV of every chosen cohort, then the page."""
    start = time.perf_counter()
    for name in args.cohorts:
        panel_folder(name)  # export once, before the workers read it
    folds = 1 if args.quick else 5
    names = [*args.cohorts, *args.bundled]
    repeats = {n: 1 if args.quick else cohort_repeats(n, args.repeats, args.repeats_large) for n in names}
    # the large cohorts first, so that the two workers finish together
    order = sorted(names, key=lambda n: -cohort_repeats(n, 0, 1))
    jobs = [(n, r, k, args.quick) for n in order for r in range(repeats[n]) for k in range(folds)]
    records = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for job, record in zip(jobs, pool.map(split_record, *zip(*jobs, strict=True)), strict=True):
            records.append(record)
            print(f"{job[0]}: repeat {job[1]} split {job[2]} done ({record['seconds']:.0f} s)", file=sys.stderr)
    document = {
        "command": command_line("panel.py", argv),
        "date": datetime.date.today().isoformat(),
        "repeats": repeats,
        "folds": folds,
        "bootstrap": args.bootstrap,
        "records": records,
        "wall_seconds": time.perf_counter() - start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out / SCORES, "wt") as stream:  # the scores are safe before the slow summary
        json.dump(document, stream)
    render(args.out, document)


PANEL_BOOTSTRAP = 200
"""Patient-bootstrap resamples per cohort (repeated.py's 1,000 take over 15 min on the large cohorts;
the meta-analysis uses the corrected t-intervals, not the bootstrap)."""
SCORES = "panel-scores.json.gz"
"""The run's records (per-patient test scores of every model and split), gzipped: 13 MB as text."""


def render(out: Path, document: dict[str, Any]) -> None:
    """The summary (patient bootstrap, corrected t, random effects) and the page from the records;
    ``OUT/panel.json`` holds everything but the records."""
    document["summary"] = summarise_panel(document["records"], document["bootstrap"])
    write_page(out, "panel", {k: v for k, v in document.items() if k != "records"}, markdown)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write one site folder per panel cohort")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--cohorts", nargs="+", default=list(PANEL), choices=list(PANEL))
    repeated = commands.add_parser("run", help="repeated CV on the panel, with a meta-analysis over cohorts")
    repeated.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    repeated.add_argument("--cohorts", nargs="+", default=list(PANEL), choices=list(PANEL))
    repeated.add_argument("--bundled", nargs="*", default=list(DATASETS), choices=DATASETS)
    repeated.add_argument("--repeats", type=int, default=2)
    repeated.add_argument(
        "--repeats-large", type=int, default=1, help=f"repeats of cohorts over {LARGE_COHORT} patients"
    )
    repeated.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    repeated.add_argument(
        "--bootstrap", type=int, default=PANEL_BOOTSTRAP, help="patient-bootstrap resamples per cohort"
    )
    repeated.add_argument("--quick", action="store_true", help="one split, tiny models: checks the path")
    again = commands.add_parser("render", help=f"recompute the summary and page from OUT/{SCORES}")
    again.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    again.add_argument("--bootstrap", type=int, help="resamples (default: the run's)")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args, argv)
        return
    if args.command == "render":
        with gzip.open(args.out / SCORES, "rt") as stream:
            document = json.load(stream)
        document["bootstrap"] = args.bootstrap or document["bootstrap"]
        render(args.out, document)
        return
    for name in args.cohorts:
        folder = export_cohort(name, load_cohort(name), args.out)
        print(f"{folder}: {', '.join(PANEL[name].modalities)} ({PANEL[name].about})")


if __name__ == "__main__":
    main()
