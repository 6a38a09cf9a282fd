"""Which merge weighting should be the default? Measured on validation patients only.

    python bench/weighting.py --out docs/benchmarks [--quick]

For each bundled data set (TCGA-ACC, PBC, synthetic) and each of 5 patient-level folds, blocks
are trained two ways: on the pooled cohort (as ``fedlego centralized`` does) and as unimodal sites
with imbalanced patient counts (``build_scenario`` with imbalance 0.9, no paired site: where
weighting by samples matters most). Each set of blocks is merged with uniform, samples and
validation weights, and every merge is scored on the fold's complete-case **validation**
patients: the task loss (lower is better) and the metric (c-index / AUC). No test patient is
used. Paired per-fold differences (samples - uniform, validation - uniform) are given as mean
and a 95 % t-interval over the folds of all data sets together.

Writes ``OUT/weighting.json`` and ``OUT/weighting.md``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from fedlego.common.centralized import train_fold
from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.tensors import make_tensor_set
from fedlego.common.lego import LegoMerge
from fedlego.common.training import evaluate_loss
from fedlego.common.workflow import scores_of
from fedlego_bench.quality import load_benchmark_dataset, metric, quick_config, unimodal_site_blocks
from fedlego_bench.standalone import command_line, write_page

WEIGHTINGS = ("uniform", "samples", "validation")
DATASETS = ("tcga-acc", "pbc", "synthetic")
IMBALANCE = 0.9


def _scores(blocks, task, validation, config) -> dict[str, dict[str, float]]:
    scores = {}
    for weighting in WEIGHTINGS:
        merged = LegoMerge(blocks, config.merge.latent_merge, config.merge.head_merge, weighting)
        scores[weighting] = {
            "loss": evaluate_loss(merged, validation, task),
            "metric": metric(task, scores_of(merged, validation, task), validation),
        }
    return scores


def pooled_fold(dataset, config, split) -> dict[str, dict[str, float]]:
    """Blocks of the centralized pipeline, merges scored on complete-case validation patients."""
    fold = train_fold(dataset, config, split, log=lambda _: None)
    return _scores(fold.blocks, fold.task, fold.paired_validation, config)


def imbalanced_sites_fold(dataset, config, split) -> dict[str, dict[str, float]]:
    """Blocks of unimodal sites with imbalanced patient counts, each fitting its own preprocessing."""
    task, blocks, preprocessors = unimodal_site_blocks(dataset, config, split, 0.0, IMBALANCE)
    complete = set(dataset.complete_case_ids(config.modalities))
    validation = make_tensor_set(dataset, preprocessors, [i for i in split.validation if i in complete])
    return _scores(blocks, task, validation, config)


def paired_difference(values: list[float]) -> dict[str, float]:
    """Mean of paired per-fold differences with a 95 % t-interval (NaN folds left out)."""
    array = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if array.size < 2:
        return {
            "mean": float(array.mean()) if array.size else float("nan"),
            "low": float("nan"),
            "high": float("nan"),
            "n": int(array.size),
        }
    half = float(stats.t.ppf(0.975, array.size - 1) * array.std(ddof=1) / np.sqrt(array.size))
    return {
        "mean": float(array.mean()),
        "low": float(array.mean() - half),
        "high": float(array.mean() + half),
        "n": int(array.size),
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting and score: paired differences of samples and validation weights against uniform."""
    summary: dict[str, Any] = {}
    for setting in ("pooled", "imbalanced-sites"):
        rows = [r[setting] for r in records]
        summary[setting] = {
            score: {
                f"{w} - uniform": paired_difference([row[w][score] - row["uniform"][score] for row in rows])
                for w in ("samples", "validation")
            }
            for score in ("loss", "metric")
        }
    return summary


def markdown(document: dict[str, Any]) -> str:
    lines = [
        "# Merge weighting on validation patients",
        "",
        f"`{document['command']}` on {document['date']} ({document['wall_seconds'] / 60:.1f} min). "
        f"{document['folds']} patient-level folds of each of {', '.join(document['datasets'])}; merges scored on the "
        "fold's complete-case validation patients only (no test patient). Paired per-fold differences against "
        "uniform weights, mean and 95 % t-interval over all folds of all data sets; loss: lower is better, "
        "metric (c-index or AUC): higher is better. Validation weights come from each block's score on "
        "validation patients, so on the pooled blocks they are scored on patients that chose them: their "
        "advantage there is optimistic. Uniform and samples weights use no validation data.",
        "",
        "| blocks | score | samples - uniform | validation - uniform |",
        "|---|---|---|---|",
    ]
    for setting, scores in document["summary"].items():
        for score, cells in scores.items():
            shown = [
                f"{c['mean']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] (n={c['n']})"
                for c in (cells["samples - uniform"], cells["validation - uniform"])
            ]
            lines.append(f"| {setting} | {score} | {shown[0]} | {shown[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--quick", action="store_true", help="one fold, tiny models: checks the path, not the science")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    records = []
    for name in DATASETS:
        dataset, config = load_benchmark_dataset(name)
        if args.quick:
            config = quick_config(config)
        for split in dataset_splits(dataset, n_folds=1 if args.quick else config.n_folds, seed=config.seed):
            print(f"{name}: fold {split.fold + 1}", file=sys.stderr, flush=True)
            records.append(
                {
                    "dataset": name,
                    "fold": split.fold,
                    "pooled": pooled_fold(dataset, config, split),
                    "imbalanced-sites": imbalanced_sites_fold(dataset, config, split),
                }
            )
    document = {
        "command": command_line("weighting.py", argv),
        "date": datetime.date.today().isoformat(),
        "datasets": list(DATASETS),
        "folds": 1 if args.quick else 5,
        "records": records,
        "summary": summarise(records),
        "wall_seconds": time.perf_counter() - start,
    }
    write_page(args.out, "weighting", document, markdown)


if __name__ == "__main__":
    main()
