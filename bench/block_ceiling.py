"""Are the synthetic LegoBlocks as good as their encoder with a linear head, and as the ceiling?

    python bench/block_ceiling.py --out docs/benchmarks [--patients 300 1500] [--modalities M ...]
        [--init-seeds 0 ...] [--cohort-seeds 0 ...] [--name block-ceiling] [--quick]

The synthetic generator knows each modality's share of the true risk (its oracle score,
``MultimodalDataset.modality_oracle_scores``): no model of that modality alone can rank patients
better. For each cohort size (the table's 300 patients, and a larger cohort of the same generator)
and each of 5 patient-level folds, every modality's LegoBlock and its comparator (the same
reference encoder with a linear head, trained like the block: ``baselines.fit_plain_unimodal``)
are trained exactly as in the benchmark table, and scored with the modality's oracle on **every**
test patient holding the modality (the table scores blocks on the complete-case test patients
only: 8-19 a fold on the synthetic cohort). Paired per-fold differences (block - plain, block -
oracle) are given with 95 % t-intervals over the folds. ``--init-seeds`` repeats everything with
other initialisation and training seeds of the block and its comparator (the cohort and the splits
stay); the block's kept epoch is recorded.

A test c-index of a weak-signal modality is mostly outcome noise: the bags modality's own term is
3 % of the risk's variance, so even its oracle reaches only about 0.56, and a chance association of
one cohort draw is shared by its training and test folds (resampling the folds or the test patients
cannot see it). Two views look past it: each model's Spearman correlation with the modality's
oracle on the test patients (does the model rank by the modality's true risk term?), and
``--cohort-seeds``, which draws fresh cohorts from the same generator and gives the block - plain
difference with a t-interval over the cohorts (each cohort's 5-fold mean is one observation).

Writes ``OUT/<name>.json`` and ``OUT/<name>.md`` (name: ``block-ceiling``).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.tensors import fit_preprocessors, make_tensor_set, task_for
from fedlego.common.workflow import scores_of, train_block, unimodal_forward
from fedlego_bench import quality
from fedlego_bench.baselines import fit_plain_unimodal
from fedlego_bench.standalone import command_line, write_page
from fedlego_bench.weighting import paired_difference

PATIENTS = (300, 1500)


def oracle_agreement(scores: np.ndarray, oracle: np.ndarray) -> float:
    """Spearman correlation of a model's scores with the modality's oracle term (NaN if constant)."""
    if np.ptp(scores) == 0 or np.ptp(oracle) == 0:
        return float("nan")
    return float(spearmanr(scores, oracle)[0])


def fold_scores(dataset, config, split, modalities: list[str]) -> dict[str, dict[str, float]]:
    """Per modality: block, plain and oracle metric on the fold's test patients holding it, the
    block's and plain model's agreement with the oracle, and the block's kept epoch."""
    preprocessors = fit_preprocessors(dataset, split.train, config.preprocessing)
    task = task_for(dataset.labels, split.train)
    train = make_tensor_set(dataset, preprocessors, split.train)
    validation = make_tensor_set(dataset, preprocessors, split.validation)
    test = make_tensor_set(dataset, preprocessors, split.test)
    baseline = quality.baseline_settings(config)
    scores: dict[str, dict[str, float]] = {}
    for modality in modalities:
        kind = dataset.modalities[modality].kind
        block, report = train_block(modality, kind, train, validation, task, config.model, config.training)
        plain = fit_plain_unimodal(modality, train, validation, task, baseline)
        held = test.restrict([modality])
        oracle = dataset.modality_oracle_scores[modality].reindex(held.ids).to_numpy()
        block_scores = scores_of(block, held, task, unimodal_forward(block))
        plain_scores = scores_of(plain, held, task)
        scores[modality] = {
            "block": quality.metric(task, block_scores, held),
            "plain": quality.metric(task, plain_scores, held),
            "oracle": quality.metric(task, oracle, held),
            "block_rho": oracle_agreement(block_scores, oracle),
            "plain_rho": oracle_agreement(plain_scores, oracle),
            "n_test": len(held),
            "block_epoch": report.best_epoch,
        }
    return scores


MEANS = ("block", "plain", "oracle", "block_rho", "plain_rho", "n_test", "block_epoch")


def run_size(
    patients: int, init_seed: int, cohort_seed: int, modalities: list[str] | None, quick: bool
) -> dict[str, Any]:
    """Every fold of the synthetic cohort of ``patients`` patients drawn with ``cohort_seed``,
    models seeded with ``init_seed``."""
    quality.SYNTHETIC_PATIENTS = patients
    quality.SYNTHETIC_SEED = cohort_seed
    dataset, config = quality.load_benchmark_dataset("synthetic")
    if quick:
        config = quality.quick_config(config)
    splits = dataset_splits(dataset, n_folds=1 if quick else config.n_folds, seed=config.seed)
    config = replace(
        config,
        seed=init_seed,
        model=replace(config.model, seed=init_seed),
        training=replace(config.training, seed=init_seed),
    )
    names = modalities or config.modalities
    folds = []
    for split in splits:
        print(
            f"synthetic {patients}, cohort {cohort_seed}, init seed {init_seed}: fold {split.fold + 1}",
            file=sys.stderr,
            flush=True,
        )
        folds.append(fold_scores(dataset, config, split, names))
    summary = {}
    for modality in names:
        rows = [f[modality] for f in folds]
        summary[modality] = {
            **{k: float(np.nanmean([r[k] for r in rows])) for k in MEANS},
            "block - plain": paired_difference([r["block"] - r["plain"] for r in rows]),
            "block - oracle": paired_difference([r["block"] - r["oracle"] for r in rows]),
            "plain - oracle": paired_difference([r["plain"] - r["oracle"] for r in rows]),
        }
    return {
        "patients": patients,
        "init_seed": init_seed,
        "cohort_seed": cohort_seed,
        "folds": folds,
        "summary": summary,
    }


def across_cohorts(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cohort size, init seed and modality seen in more than one cohort draw: the means over the
    cohorts and the block - plain difference (c-index and oracle agreement) with a t-interval over
    the cohorts, each cohort's fold mean one observation."""
    groups: dict[tuple[int, int, str], list[dict[str, float]]] = {}
    for size in sizes:
        for modality, summary in size["summary"].items():
            groups.setdefault((size["patients"], size.get("init_seed", 0), modality), []).append(summary)
    rows = []
    for (patients, init_seed, modality), cohorts in groups.items():
        if len(cohorts) < 2:
            continue
        rows.append(
            {
                "patients": patients,
                "init_seed": init_seed,
                "modality": modality,
                "cohorts": len(cohorts),
                **{k: float(np.nanmean([c[k] for c in cohorts])) for k in MEANS},
                "block - plain": paired_difference([c["block"] - c["plain"] for c in cohorts]),
                "block rho - plain rho": paired_difference([c["block_rho"] - c["plain_rho"] for c in cohorts]),
            }
        )
    return rows


def _interval(cell: dict[str, float]) -> str:
    if not np.isfinite(cell["low"]):
        return f"{cell['mean']:+.3f}"
    return f"{cell['mean']:+.3f} [{cell['low']:+.3f}, {cell['high']:+.3f}]"


def _number(summary: dict[str, Any], key: str, form: str = ".3f") -> str:
    value = summary.get(key)
    return "—" if value is None or not np.isfinite(value) else format(value, form)


def markdown(document: dict[str, Any]) -> str:
    lines = [
        "# Synthetic LegoBlocks against their plain encoder and their ceiling",
        "",
        f"`{document['command']}` on {document['date']} ({document['wall_seconds'] / 60:.1f} min). Synthetic "
        "cohorts of the table's generator (cohort seed 0 is the table's cohort), 5 patient-level folds each."
        " Test c-index on every test "
        "patient holding the modality, mean over folds; oracle: the modality's own term of the true risk "
        "(the best any model of that modality alone can rank by). Differences are paired by fold, mean "
        "[95 % t-interval]. rho: Spearman correlation of the model's test scores with the oracle, mean "
        "over folds (1 = ranks exactly by the modality's true risk term).",
        "",
        "| patients | cohort seed | init seed | modality | test patients a fold | block's kept epoch | LegoBlock "
        "| encoder + linear head | oracle (ceiling) | block - plain | block - oracle | plain - oracle "
        "| rho block | rho plain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in document["sizes"]:
        for modality, s in size["summary"].items():
            lines.append(
                f"| {size['patients']} | {size.get('cohort_seed', 0)} | {size.get('init_seed', 0)} | {modality} "
                f"| {s['n_test']:.0f} | {_number(s, 'block_epoch', '.1f')} | {s['block']:.3f} | {s['plain']:.3f} "
                f"| {s['oracle']:.3f} | {_interval(s['block - plain'])} | {_interval(s['block - oracle'])} "
                f"| {_interval(s['plain - oracle'])} | {_number(s, 'block_rho', '+.2f')} "
                f"| {_number(s, 'plain_rho', '+.2f')} |"
            )
    cohorts = document.get("across_cohorts") or []
    if cohorts:
        lines += [
            "",
            "## Over independent cohort draws",
            "",
            "The same generator with other seeds: fresh patients, features and outcomes. Means over the "
            "cohorts; differences with a 95 % t-interval over the cohorts (each cohort's 5-fold mean is "
            "one observation).",
            "",
            "| patients | init seed | modality | cohorts | LegoBlock | encoder + linear head | oracle (ceiling) "
            "| block - plain | rho block | rho plain | rho block - rho plain |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in cohorts:
            lines.append(
                f"| {row['patients']} | {row['init_seed']} | {row['modality']} | {row['cohorts']} "
                f"| {row['block']:.3f} | {row['plain']:.3f} | {row['oracle']:.3f} "
                f"| {_interval(row['block - plain'])} | {_number(row, 'block_rho', '+.2f')} "
                f"| {_number(row, 'plain_rho', '+.2f')} | {_interval(row['block rho - plain rho'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--patients", type=int, nargs="+", default=list(PATIENTS), help="cohort sizes")
    parser.add_argument("--modalities", nargs="+", help="only these synthetic modalities (default: all)")
    parser.add_argument("--init-seeds", type=int, nargs="+", default=[0], help="block and comparator seeds")
    parser.add_argument("--cohort-seeds", type=int, nargs="+", default=[0], help="cohort draws (0: table's)")
    parser.add_argument("--name", default="block-ceiling", help="page and JSON file name")
    parser.add_argument("--quick", action="store_true", help="one fold, tiny models: checks the path, not the science")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    document = {
        "command": command_line("block_ceiling.py", argv),
        "date": datetime.date.today().isoformat(),
        "sizes": [
            run_size(n, seed, cohort, args.modalities, args.quick)
            for n in args.patients
            for cohort in args.cohort_seeds
            for seed in args.init_seeds
        ],
    }
    document["across_cohorts"] = across_cohorts(document["sizes"])
    document["wall_seconds"] = time.perf_counter() - start
    write_page(args.out, args.name, document, markdown)


if __name__ == "__main__":
    main()
