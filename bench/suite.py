"""The fedlego benchmark suite: ``make bench`` (``python bench/suite.py --out docs/benchmarks``).

Sections:
- quality (``bench/quality.py``): the poster's table with baselines on bundled TCGA-ACC, PBC and
  synthetic data (5 patient-level folds each), and the ablations;
- cost (``bench/cost.py``): simulated federations (``fedlego simulate``) against the centralized
  pipeline on the same folds, bytes per site, time per phase, peak memory, scaling in sites and
  modalities.

Writes ``OUT/results.json``, ``OUT/README.md`` and the PNG figures it links. ``--quick`` runs a
smoke-sized version (one fold, tiny models) that checks the whole path, not the science.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedlego_bench.cost import federated_summaries, machine_description, run_cost
from fedlego_bench.cost_page import cost_figures, cost_markdown
from fedlego_bench.figures import quality_figures
from fedlego_bench.pages import (
    disjoint_paired_table,
    frequency_table,
    fuse_modes_table,
    merge_methods_table,
    missing_tables,
    paired_differences_table,
    poster_table,
    site_ablation_tables,
    targets,
    weighting_table,
)
from fedlego_bench.quality import (
    IMBALANCES,
    MISSING_DRAWS,
    OVERLAPS,
    SITE_ABLATION_DATASETS,
    TEST_MISSING_RATES,
    run_quality,
)

DATASETS = ["tcga-acc", "pbc", "synthetic"]


def log(message: str) -> None:
    """Progress on stderr, flushed (the suite runs for many minutes)."""
    print(message, file=sys.stderr, flush=True)


def fedavg_bytes_lines(document: dict[str, Any]) -> list[str]:
    """Bytes per site: LegoMerge as measured in the simulated TCGA-ACC federation (cost section)
    beside FedAvg of the early-fusion baseline (parameters x rounds x 2 directions, float32)."""
    lines = []
    for name, doc in document["quality"].items():
        folds = [f["fedavg_early_fusion"] for f in doc["folds"] if f.get("fedavg_early_fusion")]
        if folds:
            first = folds[0]
            lines.append(
                f"- {name}: FedAvg early fusion, {first['parameters']:,} parameters: "
                f"{first['bytes_per_site'] / 2**20:.2f} MiB per paired site, analytic float32 payload "
                f"({doc['settings']['baselines']['fedavg_rounds']} rounds x 2 directions, no framing; fold 0)."
            )
    measured = (document.get("cost") or {}).get("bytes", {}).get("legomerge_bytes_per_site") or {}
    if measured:
        lines += [
            "",
            "LegoMerge + LegoFuse, measured on the wire per site in the simulated TCGA-ACC federation (fold 0;",
            "blocks, block FedAvg, merge and fuse phases with message framing; describe and evaluation left out):",
            "",
            "| site | LegoMerge + LegoFuse bytes (measured) |",
            "|---|---|",
        ]
        lines += [f"| {site} | {value['total'] / 2**20:.2f} MiB |" for site, value in measured.items()]
    return lines


def quality_markdown(document: dict[str, Any]) -> list[str]:
    """The table and the ablations, with their figures."""
    quality = document["quality"]
    federated = federated_summaries(document["cost"]) if document.get("cost") else None
    rates = ", ".join(str(r) for r in TEST_MISSING_RATES)
    return [
        "## The poster's table on bundled data",
        "",
        "Test metric on the complete-case test patients of each fold, mean ± sample std over folds. Blocks are",
        "trained on every training patient holding their modality; LegoFuse and all baselines on the paired",
        "(complete-case) training patients; early stopping, penalties and the fuse's kept epoch are chosen on",
        "validation patients only. The federated rows come from `fedlego simulate` on the same folds (cost",
        "section); their test population is each site's test patients, not only the complete cases.",
        "",
        *poster_table(quality, federated),
        "",
        *targets(quality),
        "",
        "![Every model of the table, mean ± std over folds](table.png)",
        "",
        "## Ablations",
        "",
        "### Frequency vs spatial domain",
        "",
        "The same blocks retrained with spatial-domain latent updates (`frequency=False`), merged and fused.",
        "",
        *frequency_table(quality),
        "",
        "![Frequency vs spatial domain](frequency-vs-spatial.png)",
        "",
        "### Latent and head merge methods",
        "",
        "LegoMerge of the same trained blocks with every registered latent and head merge (uniform weights).",
        "",
        *merge_methods_table(quality),
        "",
        "![Merge methods](merge-methods.png)",
        "",
        "The same blocks merged (harmonic + slerp) with uniform weights, weights by training patients, or by",
        "validation skill (max(validation c-index - 0.5, 0.01), from each block's own validation patients):",
        "",
        *weighting_table(quality),
        "",
        "### Paired differences",
        "",
        "Test metric differences paired by fold (the same patients), mean with a 95 % t-interval over the folds.",
        "With 10-20 test patients a fold, an interval that crosses 0 is no evidence either way.",
        "",
        *paired_differences_table(quality),
        "",
        "An interval over folds covers the variation between the folds of one cohort, not between cohorts: a",
        "chance association of a weak-signal modality is shared by every fold of its cohort. For the synthetic blocks,",
        "`python bench/block_ceiling.py --cohort-seeds ...` repeats block - plain over fresh cohorts of the same",
        "generator ([block-ceiling-cohorts.md](block-ceiling-cohorts.md)).",
        "",
        "### LegoFuse topologies",
        "",
        "The same blocks fine-tuned on the paired training patients (2 epochs, encoders frozen) as `merge` (the",
        "default: starts as the merged model, anchored to it), and as the authors' `stack` and `weave`. In brackets",
        "the share of folds whose fine-tuned model beat the untrained one on validation by the 1 % margin (the",
        "others keep the untrained model: for `merge`, the merge itself).",
        "",
        *fuse_modes_table(quality),
        "",
        "### Paired patients that trained no block",
        "",
        "The scenario where fusion should pay: half of each fold's paired training patients form a hospital that",
        "trains no block; the blocks train on the other training patients and LegoFuse fine-tunes on the hospital's",
        "patients only (same validation and test patients as the table). In brackets: share of folds fine-tuned.",
        "",
        *disjoint_paired_table(quality),
        "",
        "### Modalities missing at test time",
        "",
        f"Each modality of each test patient hidden with probability p = {rates} (at least one kept, so the",
        f"share actually hidden, in italics, is lower; mean over {MISSING_DRAWS} random draws per fold). Models as",
        "in the table, nothing retrained. The baselines were trained on complete cases only, so they never saw a",
        "missing modality in training (their skip paths, zero-imputation and presence flags are untrained for it);",
        "LegoMerge's blocks each saw only their own modality, which is how it is meant to be used.",
        "",
        *missing_tables(quality),
        "![Missing modalities at test time](missing-modalities.png)",
        "",
        "### Overlap between the patients of unimodal sites",
        "",
        f"One site per modality, no paired site (`build_scenario`, overlap {', '.join(map(str, OVERLAPS))});",
        "each site fits its own preprocessing and block on its training patients; the blocks are then merged",
        f"with uniform or sample-count weights. Data sets: {', '.join(SITE_ABLATION_DATASETS)}.",
        "",
        *site_ablation_tables(quality, "overlap"),
        "![Overlap](overlap.png)",
        "",
        "### Imbalance across unimodal sites",
        "",
        "Overlap 0; the non-shared patients are spread over the sites with weights from 1 down to",
        f"1 - imbalance (imbalance {', '.join(map(str, IMBALANCES))}).",
        "",
        *site_ablation_tables(quality, "imbalance"),
        "![Imbalance](imbalance.png)",
        "",
        "### Bytes per site: LegoMerge vs FedAvg of early fusion",
        "",
        *fedavg_bytes_lines(document),
        "",
    ]


def markdown(document: dict[str, Any]) -> str:
    """The benchmark page."""
    seconds = document["wall_seconds"]
    lines = [
        "# fedlego benchmark suite",
        "",
        f"Machine: {document['machine']}. Date: {document['date']}.",
        f"Command: `{document['command']}` (`make bench` runs the full suite). "
        f"Wall time: {seconds['total'] / 60:.1f} min "
        + "("
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items() if k != "total")
        + ").",
    ]
    kept = document.get("kept_sections") or {}
    if kept:
        lines += [
            f"The {section} section is kept from an earlier run: `{origin['command']}` on {origin['date']} "
            f"({origin['seconds'] / 60:.1f} min), not rerun by this command."
            for section, origin in kept.items()
        ]
    lines += [
        "Every other figure on this page comes from that run; raw numbers per fold are in `results.json`."
        if kept
        else "Every figure on this page comes from that run; raw numbers per fold are in `results.json`.",
        "",
    ]
    if document["quick"]:
        lines += ["**Smoke run (`--quick`): one fold, tiny models. These numbers mean nothing.**", ""]
    if document.get("quality"):
        lines += quality_markdown(document)
    if document.get("cost"):
        lines += [cost_markdown(document["cost"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--quick", action="store_true", help="smoke-sized run: one fold, tiny models")
    parser.add_argument("--sections", nargs="+", default=["quality", "cost"], choices=["quality", "cost"])
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--render", action="store_true", help="only redraw the page and figures from OUT/results.json")
    parser.add_argument(
        "--keep-other-sections",
        action="store_true",
        help="keep the sections not run from OUT/results.json (the page says which run they come from)",
    )
    args = parser.parse_args(argv)
    if args.render:
        write_outputs(json.loads((args.out / "results.json").read_text()), args.out)
        return
    command = " ".join(["python bench/suite.py", *(argv if argv is not None else sys.argv[1:])])
    start = time.perf_counter()
    document: dict[str, Any] = {
        "machine": machine_description(),
        "date": datetime.date.today().isoformat(),
        "command": command,
        "quick": args.quick,
        "wall_seconds": {},
    }
    if "quality" in args.sections:
        begin = time.perf_counter()
        document["quality"] = run_quality(args.datasets, args.quick, log)
        document["wall_seconds"]["quality"] = time.perf_counter() - begin
    if "cost" in args.sections:
        begin = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="fedlego-bench-") as work:
            document["cost"] = run_cost(Path(work), args.quick, log)
        document["wall_seconds"]["cost"] = time.perf_counter() - begin
    document["wall_seconds"]["total"] = time.perf_counter() - start
    if args.keep_other_sections:
        keep_sections(document, json.loads((args.out / "results.json").read_text()), args.sections)
    write_outputs(document, args.out)
    log(f"benchmark written to {args.out / 'README.md'} in {document['wall_seconds']['total'] / 60:.1f} min")


def keep_sections(document: dict[str, Any], earlier: dict[str, Any], sections: list[str]) -> None:
    """Copy the sections not run from an earlier results document, recording where they come from."""
    kept = document.setdefault("kept_sections", {})
    for section in ("quality", "cost"):
        if section in sections or not earlier.get(section):
            continue
        document[section] = earlier[section]
        origin = (earlier.get("kept_sections") or {}).get(section)
        kept[section] = origin or {
            "command": earlier["command"],
            "date": earlier["date"],
            "seconds": earlier["wall_seconds"].get(section, float("nan")),
        }


def write_outputs(document: dict[str, Any], out: Path) -> None:
    """Figures, ``results.json`` and the page ``README.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    figures = quality_figures(document["quality"], out) if document.get("quality") else []
    figures += cost_figures(document["cost"], out) if document.get("cost") else []
    document["figures"] = figures
    (out / "results.json").write_text(json.dumps(document, indent=2, default=str))
    (out / "README.md").write_text(markdown(document))


if __name__ == "__main__":
    main()
