"""What disclosure control costs: ``min-cell = 10`` against the settings before it (``min-cell = 1``),
over the repeated cross-validation's splits.

    python bench/disclosure.py --out docs/benchmarks [--jobs 2] [--datasets ...] [--repeats 5]

For every split of ``repeated.py`` (same data sets, seeds and 70/15/15 fractions) the centralized
pipeline trains the blocks, LegoMerge and LegoFuse twice, with ``min_cell`` 1 and 10 (rare
categories folded into 'other', columns and lab variables observed in fewer than 10 training
patients left out), and scores both on the split's test patients. Reported per data set and model:
the paired difference (10 - 1) over the splits with the corrected resampled t-interval
(``repeated.corrected_t_interval``), and a random-effects (DerSimonian-Laird) mean over the data sets.
Survival time cut points are not part of this comparison: the centralized pipeline fits them on
pooled patients and sends nothing; in a federation a site rounds them to two significant digits.

Writes ``OUT/disclosure.json`` and ``OUT/disclosure.md``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlego.common.centralized import train_fold
from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.workflow import scores_of, unimodal_forward
from fedlego_bench.meta import random_effects
from fedlego_bench.quality import load_benchmark_dataset
from fedlego_bench.repeated import DATASETS, FRACTIONS, SPLIT_SEED_STRIDE, corrected_t_interval
from fedlego_bench.standalone import command_line, write_page

SETTINGS = {"before": 1, "min-cell": 10}
"""The two ``min_cell`` values compared."""


def split_metrics(name: str, repeat: int, fold: int) -> dict[str, Any]:
    """Test metric of every block, the merge and the fuse under both settings on one split."""
    torch.set_num_threads(1)
    dataset, config = load_benchmark_dataset(name)
    split = dataset_splits(dataset, n_folds=fold + 1, seed=SPLIT_SEED_STRIDE * repeat, fractions=FRACTIONS)[fold]
    metrics: dict[str, dict[str, float]] = {}
    widths: dict[str, dict[str, int]] = {}
    for label, min_cell in SETTINGS.items():
        models = train_fold(dataset, replace(config, min_cell=min_cell), split, log=lambda _: None)
        task, test = models.task, models.test
        scored = {f"block:{m}": scores_of(b, test, task, unimodal_forward(b)) for m, b in models.blocks.items()}
        scored |= {"merge": scores_of(models.merged, test, task), "fuse": scores_of(models.fused, test, task)}
        metrics[label] = {k: float(task.metric(v, test.targets)) for k, v in scored.items()}
        widths[label] = {m: int(test.inputs[m][next(iter(test.inputs[m]))].shape[-1]) for m in models.blocks}
    return {"dataset": name, "repeat": repeat, "fold": fold, "metrics": metrics, "feature_widths": widths}


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per data set and model: mean metric under each setting and the paired difference with its
    corrected t-interval; per model over the data sets: the random-effects mean difference."""
    per_dataset: dict[str, Any] = {}
    for name in dict.fromkeys(r["dataset"] for r in records):
        mine = [r for r in records if r["dataset"] == name]
        models = list(mine[0]["metrics"]["before"])
        rows = {}
        for model in models:
            before = np.array([r["metrics"]["before"][model] for r in mine])
            after = np.array([r["metrics"]["min-cell"][model] for r in mine])
            keep = np.isfinite(before) & np.isfinite(after)
            difference = after[keep] - before[keep]
            interval = corrected_t_interval(list(difference))
            rows[model] = {
                "before": float(before[keep].mean()),
                "min-cell": float(after[keep].mean()),
                "difference": float(difference.mean()),
                **interval,
                "splits": int(keep.sum()),
                "changed_splits": int((np.abs(difference) > 0).sum()),
            }
        widths = {
            label: {m: sorted({r["feature_widths"][label][m] for r in mine}) for m in mine[0]["feature_widths"][label]}
            for label in SETTINGS
        }
        per_dataset[name] = {"models": rows, "feature_widths": widths}
    pooled = {}
    for model in ("merge", "fuse"):
        rows = [s["models"][model] for s in per_dataset.values()]
        estimate = random_effects([(r["difference"], r["t_low"], r["t_high"]) for r in rows])
        if estimate is not None:
            pooled[model] = estimate
    return {"datasets": per_dataset, "random_effects": pooled}


def markdown(document: dict[str, Any]) -> str:
    """The page."""
    lines = [
        "# What disclosure control costs: min-cell = 10 against min-cell = 1",
        "",
        f"`{document['command']}` ({document['date']}, {document['wall_seconds'] / 60:.1f} min on 2 cores; "
        f"{document['repeats']} repeats x 5 splits per data set, the splits of repeated.py).",
        "",
        "Each row: the mean test metric over the splits under each setting, and the paired difference "
        "(min-cell 10 - min-cell 1) with its corrected resampled t-interval (95 %). 'changed' counts the splits "
        "in which the two settings gave a different metric at all. Under min-cell 10 rare categories fold into "
        "'other' (fewer input features), rare values of coded numeric columns count as missing and medians are "
        "rounded to two significant digits, which moves imputed values: a block whose feature count did not "
        "change can still differ. The min-cell 1 column reproduces repeated.py's stored figures.",
        "",
    ]
    for name, summary in document["summary"]["datasets"].items():
        lines += [
            f"## {name}",
            "",
            "| model | min-cell 1 | min-cell 10 | difference [95 % CI] | changed |",
            "|---|---|---|---|---|",
        ]
        for model, row in summary["models"].items():
            lines.append(
                f"| {model} | {row['before']:.3f} | {row['min-cell']:.3f} | "
                f"{row['difference']:+.3f} [{row['t_low']:+.3f}, {row['t_high']:+.3f}] | "
                f"{row['changed_splits']}/{row['splits']} |"
            )
        widths = summary["feature_widths"]
        lines += [
            "",
            "Input features per modality (min-cell 1 -> 10): "
            + ", ".join(f"{m} {widths['before'][m]} -> {widths['min-cell'][m]}" for m in widths["before"]),
            "",
        ]
    lines += [
        "## Over the data sets (random effects, DerSimonian-Laird)",
        "",
        "Each data set's difference weighted by the inverse of its variance (from the corrected t-interval) plus "
        "the between-set variance tau^2; a data set where the two settings never differ (zero variance) is "
        "left out.",
        "",
    ]
    for model, row in document["summary"]["random_effects"].items():
        lines.append(f"- {model}: {row['mean']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}] (tau^2 {row['tau2']:.2g})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    jobs = [(n, r, k) for n in args.datasets for r in range(args.repeats) for k in range(5)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        records = []
        for job, record in zip(jobs, pool.map(split_metrics, *zip(*jobs, strict=True)), strict=True):
            records.append(record)
            print(f"{job[0]}: repeat {job[1]} split {job[2]} done", file=sys.stderr, flush=True)
    document = {
        "command": command_line("disclosure.py", argv),
        "date": datetime.date.today().isoformat(),
        "repeats": args.repeats,
        "summary": summarise(records),
        "records": records,
        "wall_seconds": time.perf_counter() - start,
    }
    write_page(args.out, "disclosure", document, markdown)


if __name__ == "__main__":
    main()
