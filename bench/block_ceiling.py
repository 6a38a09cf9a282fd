"""Are the synthetic LegoBlocks as good as their encoder with a linear head, and as the ceiling?

    python bench/block_ceiling.py --out docs/benchmarks [--patients 300 1500] [--modalities M ...]
        [--init-seeds 0 ...] [--name block-ceiling] [--quick]

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
import quality
from baselines import BaselineConfig, fit_plain_unimodal
from standalone import command_line, write_page
from weighting import paired_difference

from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.tensors import fit_preprocessors, make_tensor_set, task_for
from fedlego.common.workflow import scores_of, train_block, unimodal_forward

PATIENTS = (300, 1500)


def fold_scores(dataset, config, split, modalities: list[str]) -> dict[str, dict[str, float]]:
    """Per modality: block, plain and oracle metric on the fold's test patients holding it, and
    the block's kept epoch."""
    preprocessors = fit_preprocessors(dataset, split.train, config.preprocessing)
    task = task_for(dataset.labels, split.train)
    train = make_tensor_set(dataset, preprocessors, split.train)
    validation = make_tensor_set(dataset, preprocessors, split.validation)
    test = make_tensor_set(dataset, preprocessors, split.test)
    baseline = BaselineConfig(modalities=config.modalities, seed=config.seed, training=config.training)
    scores: dict[str, dict[str, float]] = {}
    for modality in modalities:
        kind = dataset.modalities[modality].kind
        block, report = train_block(modality, kind, train, validation, task, config.model, config.training)
        plain = fit_plain_unimodal(modality, train, validation, task, baseline)
        held = test.restrict([modality])
        oracle = dataset.modality_oracle_scores[modality].reindex(held.ids).to_numpy()
        scores[modality] = {
            "block": quality.metric(task, scores_of(block, held, task, unimodal_forward(block)), held),
            "plain": quality.metric(task, scores_of(plain, held, task), held),
            "oracle": quality.metric(task, oracle, held),
            "n_test": len(held),
            "block_epoch": report.best_epoch,
        }
    return scores


def run_size(patients: int, init_seed: int, modalities: list[str] | None, quick: bool) -> dict[str, Any]:
    """Every fold of the synthetic cohort of ``patients`` patients, models seeded with ``init_seed``."""
    quality.SYNTHETIC_PATIENTS = patients
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
        print(f"synthetic {patients}, init seed {init_seed}: fold {split.fold + 1}", file=sys.stderr, flush=True)
        folds.append(fold_scores(dataset, config, split, names))
    summary = {}
    for modality in names:
        rows = [f[modality] for f in folds]
        summary[modality] = {
            **{k: float(np.mean([r[k] for r in rows])) for k in ("block", "plain", "oracle", "n_test", "block_epoch")},
            "block - plain": paired_difference([r["block"] - r["plain"] for r in rows]),
            "block - oracle": paired_difference([r["block"] - r["oracle"] for r in rows]),
            "plain - oracle": paired_difference([r["plain"] - r["oracle"] for r in rows]),
        }
    return {"patients": patients, "init_seed": init_seed, "folds": folds, "summary": summary}


def _interval(cell: dict[str, float]) -> str:
    if not np.isfinite(cell["low"]):
        return f"{cell['mean']:+.3f}"
    return f"{cell['mean']:+.3f} [{cell['low']:+.3f}, {cell['high']:+.3f}]"


def markdown(document: dict[str, Any]) -> str:
    lines = [
        "# Synthetic LegoBlocks against their plain encoder and their ceiling",
        "",
        f"`{document['command']}` on {document['date']} ({document['wall_seconds'] / 60:.1f} min). Synthetic "
        "cohort (seed 0, the table's generator), 5 patient-level folds per size. Test c-index on every test "
        "patient holding the modality, mean over folds; oracle: the modality's own term of the true risk "
        "(the best any model of that modality alone can rank by). Differences are paired by fold, mean "
        "[95 % t-interval].",
        "",
        "| patients | init seed | modality | test patients a fold | block's kept epoch | LegoBlock "
        "| encoder + linear head | oracle (ceiling) | block - plain | block - oracle | plain - oracle |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in document["sizes"]:
        for modality, s in size["summary"].items():
            epoch = f"{s['block_epoch']:.1f}" if "block_epoch" in s else "—"
            lines.append(
                f"| {size['patients']} | {size.get('init_seed', 0)} | {modality} | {s['n_test']:.0f} | {epoch} "
                f"| {s['block']:.3f} | {s['plain']:.3f} "
                f"| {s['oracle']:.3f} | {_interval(s['block - plain'])} | {_interval(s['block - oracle'])} "
                f"| {_interval(s['plain - oracle'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--patients", type=int, nargs="+", default=list(PATIENTS), help="cohort sizes")
    parser.add_argument("--modalities", nargs="+", help="only these synthetic modalities (default: all)")
    parser.add_argument("--init-seeds", type=int, nargs="+", default=[0], help="block and comparator seeds")
    parser.add_argument("--name", default="block-ceiling", help="page and JSON file name")
    parser.add_argument("--quick", action="store_true", help="one fold, tiny models: checks the path, not the science")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    document = {
        "command": command_line("block_ceiling.py", argv),
        "date": datetime.date.today().isoformat(),
        "sizes": [run_size(n, seed, args.modalities, args.quick) for n in args.patients for seed in args.init_seeds],
    }
    document["wall_seconds"] = time.perf_counter() - start
    write_page(args.out, args.name, document, markdown)


if __name__ == "__main__":
    main()
