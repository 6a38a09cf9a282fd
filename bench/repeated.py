"""The headline comparison from repeated cross-validation, with patient-bootstrap intervals.

    python bench/repeated.py --out docs/benchmarks [--repeats 5] [--datasets ...] [--jobs 2] [--quick]

For each data set, ``repeats`` x 5 patient-level random train/validation/test splits (70/15/15,
stratified by event: the benchmark's split procedure; repeat ``r`` draws fold ``k`` with seed
``SPLIT_SEED_STRIDE * r + k``, so repeat 0 is the table's splits). In each split the centralized
pipeline trains the blocks, LegoMerge and LegoFuse (default settings: the fine-tuning budget
chosen on the validation patients), LegoFuse once more with the budget chosen by inner
cross-validation on the paired training patients (``fuse-inner-cv-below = 30``: every bundled
validation set has fewer events), each modality's encoder + linear head and their late fusion,
and the baselines (Cox early and late fusion, early, late and attention fusion, FedAvg of early
fusion over simulated sites); all are scored on the split's complete-case test patients. Model
initialisation is the same in every split (the federation's shared seed); the repeats vary the
patients. Two more rows per split: LegoMerge with ``validation`` block weights (each block
weighted by its validation metric above chance: the rule for weak blocks, chosen on validation
patients), and the disjoint-paired scenario (``quality.disjoint_paired_models``: half of the paired
training patients form a hospital that trains no block; LegoFuse, default settings, fine-tunes on
the hospital's patients only), scored on the same test patients.

Reported: mean ± std over all splits, and paired differences (two models on the same test
patients of each split), mean over splits with a 95 % **patient bootstrap** interval: each of
``BOOTSTRAP`` replicates resamples the cohort's patients with replacement, scores both models of
every split on its test patients as resampled (a patient drawn twice counts twice, in every split
whose test set holds it), and averages the difference over the splits; the interval is the 2.5 and
97.5 percentiles. It covers the sampling of test patients given the trained models, not the
variation of training sets, which the repeats only average over. So each difference also gets
the **corrected resampled t-interval** (Nadeau & Bengio 2003, Machine Learning 52:239), which
does: over the J per-split differences, mean ± t(J-1) x sd x sqrt(1/J + n_test/n_train); the
n_test/n_train term (0.15/0.70 here) corrects the plain t-interval for the overlap of the splits'
training and test sets, which makes it too narrow. Both must exclude 0 before a difference is
called significant. "best block" is the block with
the highest validation metric in each split (no test patient chooses it).

Writes ``OUT/repeated.json`` and ``OUT/repeated.md``; ``--render`` recomputes the summary and the
page from ``OUT/repeated.json`` without training anything.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from fedlego.common.centralized import train_fold
from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.tensors import TensorSet
from fedlego.common.lego import LegoMerge
from fedlego.common.tasks import task_from_dict
from fedlego.common.workflow import fuse_blocks, scores_of, unimodal_forward
from fedlego_bench.baselines import MeanOfModels, fit_baseline, fit_plain_unimodal
from fedlego_bench.quality import (
    baseline_settings,
    disjoint_paired_models,
    ensemble_scores,
    load_benchmark_dataset,
    quick_config,
)
from fedlego_bench.standalone import command_line, write_page

DATASETS = ("tcga-acc", "pbc", "synthetic")
BASELINES = ("cox-early", "cox-late", "early-fusion", "late-fusion", "attention-fusion", "fedavg-early-fusion")
SPLIT_SEED_STRIDE = 1000
BOOTSTRAP = 1000
FRACTIONS = (0.7, 0.15, 0.15)
"""Train, validation and test shares of every split (the table's)."""
INNER_CV_BELOW = 30
LABELS = {
    "merge": "LegoMerge",
    "merge-validation": "LegoMerge, blocks weighted by validation metric above chance",
    "fuse": "LegoFuse (default: budget chosen on the validation patients)",
    "fuse-inner-cv": "LegoFuse, budget by inner CV on the paired training patients",
    "ensemble": "Ensemble of the blocks (mean prediction)",
    "plain-late": "Late fusion of the separately trained encoders + heads",
    "cox-early": "Cox early fusion",
    "cox-late": "Cox late fusion",
    "early-fusion": "Early fusion (SNN)",
    "late-fusion": "Late fusion (encoders + heads, trained jointly)",
    "attention-fusion": "Attention fusion (encoders + cross-modal attention, trained jointly)",
    "fedavg-early-fusion": "Early fusion (SNN) trained with FedAvg over simulated sites",
    "disjoint-merge": "disjoint paired: LegoMerge (blocks trained without the hospital's patients)",
    "disjoint-fuse": "disjoint paired: LegoFuse fine-tuned on the hospital's patients only",
}
COMPARISONS = (
    ("fuse", "merge"),
    ("fuse-inner-cv", "merge"),
    ("fuse-inner-cv", "fuse"),
    ("merge", "best-block"),
    ("merge", "ensemble"),
    ("merge", "plain-late"),
    ("merge", "late-fusion"),
    ("merge", "cox-late"),
    ("merge", "cox-early"),
    ("merge", "early-fusion"),
    ("merge", "attention-fusion"),
    ("merge", "fedavg-early-fusion"),
    ("fuse", "plain-late"),
    ("fuse", "late-fusion"),
    ("fuse", "cox-late"),
    ("fuse", "cox-early"),
    ("fuse", "early-fusion"),
    ("fuse", "attention-fusion"),
    ("fuse", "fedavg-early-fusion"),
    ("merge-validation", "merge"),
    ("merge-validation", "ensemble"),
    ("merge-validation", "plain-late"),
    ("merge-validation", "late-fusion"),
    ("merge-validation", "best-block"),
    ("disjoint-fuse", "disjoint-merge"),
)
FINE_TUNED = ("fuse", "fuse-inner-cv", "disjoint-fuse")
"""LegoFuse rows whose share of splits that kept any fine-tuning is reported."""
SHARE_LABELS = {"fuse": "default (validation)", "fuse-inner-cv": "inner CV", "disjoint-fuse": "disjoint paired"}


def _targets(data: TensorSet) -> dict[str, list]:
    return {k: v.tolist() for k, v in data.targets.items()}


def split_record(name: str, repeat: int, fold: int, quick: bool) -> dict[str, Any]:
    """Train every model on one split; the test scores of each (per test patient) and the ids."""
    torch.set_num_threads(1)
    dataset, config = load_benchmark_dataset(name)
    if quick:
        config = quick_config(config)
    seed = SPLIT_SEED_STRIDE * repeat
    split = dataset_splits(dataset, n_folds=fold + 1, seed=seed, fractions=FRACTIONS)[fold]
    start = time.perf_counter()
    models = train_fold(dataset, config, split, log=lambda _: None)
    task, test = models.task, models.test
    scores = {f"block:{m}": scores_of(b, test, task, unimodal_forward(b)) for m, b in models.blocks.items()}
    scores["ensemble"] = ensemble_scores(models.blocks, test, task)
    scores["merge"] = scores_of(models.merged, test, task)
    merge = config.merge
    weighted = LegoMerge(models.blocks, merge.latent_merge, merge.head_merge, "validation")
    scores["merge-validation"] = scores_of(weighted, test, task)
    scores["fuse"] = scores_of(models.fused, test, task)
    inner_fuse, inner_report = fuse_blocks(
        models.blocks,
        models.paired_train,
        models.paired_validation if len(models.paired_validation) else None,
        task,
        replace(config.fuse, inner_cv_below=INNER_CV_BELOW),
        config.merge,
    )
    scores["fuse-inner-cv"] = scores_of(inner_fuse, test, task)
    baseline_config = baseline_settings(config, quick)
    plain = {m: fit_plain_unimodal(m, models.train, models.validation, task, baseline_config) for m in models.blocks}
    scores.update({f"plain:{m}": scores_of(p, test, task) for m, p in plain.items()})
    scores["plain-late"] = scores_of(MeanOfModels(plain), test, task)
    failures = {}
    for baseline in BASELINES:
        try:
            fitted = fit_baseline(baseline, models.paired_train, models.paired_validation, task, baseline_config)
            scores[baseline] = fitted.scores(test)
        except ValueError as error:  # e.g. no event among the paired training patients: recorded
            failures[baseline] = str(error)
    best_block = max(models.blocks, key=lambda m: models.blocks[m].validation_score or float("-inf"))
    disjoint = disjoint_paired_models(dataset, config, split)
    own = disjoint.models  # its own preprocessing and task, the same test patients
    if list(own.test.ids) != list(test.ids):
        raise RuntimeError(f"{name} repeat {repeat} split {fold}: the disjoint-paired test patients differ")
    scores["disjoint-merge"] = scores_of(own.merged, own.test, own.task)
    disjoint_fuse, disjoint_report = disjoint.fuse(config.fuse, merge)
    scores["disjoint-fuse"] = scores_of(disjoint_fuse, own.test, own.task)
    return {
        "dataset": name,
        "repeat": repeat,
        "fold": fold,
        "task": task.to_dict(),
        "ids": list(test.ids),
        "targets": _targets(test),
        "scores": {k: np.asarray(v).tolist() for k, v in scores.items()},
        "best_block": best_block,
        "fuse_epochs": {
            "fuse": models.fuse_report.best_epoch,
            "fuse-inner-cv": inner_report.best_epoch,
            "disjoint-fuse": disjoint_report.best_epoch,
        },
        "failures": failures,
        "seconds": time.perf_counter() - start,
    }


def _metric(task, scores: np.ndarray, targets: dict[str, np.ndarray], rows: np.ndarray) -> float:
    """The task metric on the given rows (repeated rows count repeatedly); c-index and binary AUC
    from the task's pair counts (the same value as its metric, and fast)."""
    picked = {k: torch.as_tensor(v[rows]) for k, v in targets.items()}
    if task.kind == "multiclass":
        return float(task.metric(scores[rows], picked))
    return task.pair_counts(scores[rows], picked).metric


def _model_scores(record: dict[str, Any], model: str) -> np.ndarray | None:
    key = f"block:{record['best_block']}" if model == "best-block" else model
    values = record["scores"].get(key)
    return None if values is None else np.asarray(values, dtype=float)


def _split_differences(
    task, prepared: list[tuple], pairs: list[tuple[str, str]], needed: list[str], counts: np.ndarray
) -> list[list[float]]:
    """Per pair, the finite metric differences of every split on its patients drawn ``counts``
    times each (a split left with fewer than two rows is skipped)."""
    differences: list[list[float]] = [[] for _ in pairs]
    for record, targets, rows_of in prepared:
        rows = np.repeat(np.arange(len(rows_of)), counts[rows_of])
        if rows.size < 2:
            continue
        metrics = {}
        for model in needed:
            scores = _model_scores(record, model)
            metrics[model] = float("nan") if scores is None else _metric(task, scores, targets, rows)
        for j, (first, second) in enumerate(pairs):
            difference = metrics[first] - metrics[second]
            if np.isfinite(difference):
                differences[j].append(difference)
    return differences


def summarise_dataset(records: list[dict[str, Any]], bootstrap: int, seed: int = 0) -> dict[str, Any]:
    """Mean ± std per model over the splits; each paired difference's mean with its patient-bootstrap
    interval (``low``, ``high``) and corrected resampled t-interval (``t_low``, ``t_high``); and the
    share of splits where each LegoFuse row kept any fine-tuning (``share_fine_tuned``)."""
    task = task_from_dict(records[0]["task"])
    patients = sorted({i for r in records for i in r["ids"]})
    index = {p: j for j, p in enumerate(patients)}
    prepared = []
    for record in records:
        targets = {k: np.asarray(v) for k, v in record["targets"].items()}
        prepared.append((record, targets, np.array([index[i] for i in record["ids"]])))
    names = sorted({k for r in records for k in r["scores"]} | {"best-block"})
    per_model = {}
    for model in names:
        values = []
        for record, targets, _ in prepared:
            scores = _model_scores(record, model)
            rows = np.arange(len(record["ids"]))
            values.append(float("nan") if scores is None else _metric(task, scores, targets, rows))
        finite = [v for v in values if np.isfinite(v)]
        per_model[model] = {
            "mean": float(np.mean(finite)) if finite else float("nan"),
            "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan"),
            "splits": len(finite),
        }
    pairs = [c for c in COMPARISONS if c[0] in names and c[1] in names]
    pairs += [(f"block:{m}", f"plain:{m}") for m in sorted(k[6:] for k in names if k.startswith("block:"))]
    needed = sorted({m for pair in pairs for m in pair})
    rng = np.random.default_rng(seed)
    draws = np.zeros((bootstrap, len(pairs)))
    observed = np.zeros(len(pairs))
    for b in range(-1, bootstrap):  # b = -1: the observed patients, once each
        counts = (
            np.ones(len(patients), dtype=int)
            if b < 0
            else np.bincount(rng.integers(0, len(patients), len(patients)), minlength=len(patients))
        )
        differences = _split_differences(task, prepared, pairs, needed, counts)
        means = [float(np.mean(d)) if d else float("nan") for d in differences]
        if b < 0:
            observed[:] = means
            per_split = differences
        else:
            draws[b] = means
    differences = {}
    for j, (first, second) in enumerate(pairs):
        column = draws[:, j][np.isfinite(draws[:, j])]
        low, high = np.percentile(column, [2.5, 97.5]) if column.size else (float("nan"), float("nan"))
        differences[f"{first} - {second}"] = {
            "mean": float(observed[j]),
            "low": float(low),
            "high": float(high),
            **corrected_t_interval(per_split[j]),
        }
    fuse_epochs = {
        k: float(np.mean([r["fuse_epochs"][k] > 0 for r in records]))
        for k in FINE_TUNED
        if all(k in r["fuse_epochs"] for r in records)
    }
    return {
        "metric": "c-index" if task.kind == "survival" else "AUC",
        "splits": len(records),
        "test_patients": float(np.mean([len(r["ids"]) for r in records])),
        "models": per_model,
        "differences": differences,
        "share_fine_tuned": fuse_epochs,
    }


def corrected_t_interval(differences: list[float]) -> dict[str, float]:
    """Nadeau & Bengio's corrected resampled t-interval (95 %) of the mean of per-split
    differences from random train/test splits: ``t_low``, ``t_high`` (NaN with under 2 splits)."""
    values = np.asarray(differences, dtype=float)
    if values.size < 2:
        return {"t_low": float("nan"), "t_high": float("nan")}
    test_to_train = FRACTIONS[2] / FRACTIONS[0]
    half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) * np.sqrt(1 / values.size + test_to_train)
    return {"t_low": float(values.mean() - half), "t_high": float(values.mean() + half)}


def _label(model: str) -> str:
    if model == "best-block":
        return "best LegoBlock (the highest validation metric in each split)"
    if model.startswith("block:"):
        return f"LegoBlock: {model[6:]}"
    if model.startswith("plain:"):
        return f"encoder + linear head: {model[6:]}"
    return LABELS.get(model, model)


def _difference_label(key: str) -> str:
    first, second = key.split(" - ")
    short = {"best-block": "best block (by validation)", **{k: k for k in LABELS}}
    return f"{short.get(first, first)} - {short.get(second, second)}"


def markdown(document: dict[str, Any]) -> str:
    summaries = document["summary"]
    names = list(summaries)
    lines = [
        "# Repeated cross-validation with patient-bootstrap intervals",
        "",
        f"`{document['command']}` on {document['date']} ({document['wall_seconds'] / 60:.1f} min, "
        f"{document['jobs']} processes). {document['repeats']} repeats x 5 patient-level random splits per data set "
        f"(the table's split procedure; repeat 0 is the table's splits), {document['bootstrap']} patient-bootstrap "
        "replicates. Test metric on each split's complete-case test patients."
        + (
            f" Summary and intervals recomputed from the stored per-patient scores by "
            f"`{document['rendered']['command']}` on {document['rendered']['date']} (no model retrained)."
            if document.get("rendered")
            else ""
        ),
        "",
        "## Models (mean ± std over splits)",
        "",
        "| model | "
        + " | ".join(
            f"{n} ({summaries[n]['metric']}, {summaries[n]['splits']} splits, "
            f"{summaries[n]['test_patients']:.0f} test patients a split)"
            for n in names
        )
        + " |",
        "|---|" + "---|" * len(names),
    ]
    models = sorted({m for s in summaries.values() for m in s["models"]}, key=_order)
    for model in models:
        cells = []
        for n in names:
            entry = summaries[n]["models"].get(model)
            cells.append(
                "—" if entry is None or not np.isfinite(entry["mean"]) else f"{entry['mean']:.3f} ± {entry['std']:.3f}"
            )
        lines.append(f"| {_label(model)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Share of splits where LegoFuse kept any fine-tuning (the rest keep the merge): "
        + "; ".join(
            f"{n}: " + ", ".join(f"{SHARE_LABELS[k]} {v:.0%}" for k, v in summaries[n]["share_fine_tuned"].items())
            for n in names
        )
        + ".",
        "",
        "## Paired differences (mean over splits [95 % patient-bootstrap interval] "
        "[95 % corrected resampled t-interval])",
        "",
        "The bootstrap interval covers the test patients given the trained models; the corrected t-interval "
        "(Nadeau & Bengio 2003) the variation between splits, training sets included. An interval that holds 0 "
        "is no evidence of a difference either way.",
        "",
        "| difference | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    keys = list(dict.fromkeys(k for s in summaries.values() for k in s["differences"]))
    for key in keys:
        cells = []
        for n in names:
            d = summaries[n]["differences"].get(key)
            cells.append(
                ""
                if d is None or not np.isfinite(d["mean"])
                else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                + (f" [{d['t_low']:+.3f}, {d['t_high']:+.3f}]" if np.isfinite(d.get("t_low", np.nan)) else "")
            )
        lines.append(f"| {_difference_label(key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _order(model: str) -> tuple[int, str]:
    if model.startswith(("block:", "plain:")):
        return (0, model[6:] + model[:6])
    if model == "best-block":
        return (1, model)
    order = list(LABELS)
    return (2 + (order.index(model) if model in order else len(order)), model)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP)
    parser.add_argument("--quick", action="store_true", help="one split, tiny models: checks the path, not the science")
    parser.add_argument(
        "--render", action="store_true", help="only recompute the summary and page from OUT/repeated.json"
    )
    args = parser.parse_args(argv)
    if args.render:
        document = json.loads((args.out / "repeated.json").read_text())
        document["rendered"] = {"command": command_line("repeated.py", argv), "date": datetime.date.today().isoformat()}
        names = list(dict.fromkeys(r["dataset"] for r in document["records"]))
        document["summary"] = {
            n: summarise_dataset([r for r in document["records"] if r["dataset"] == n], document["bootstrap"])
            for n in names
        }
        write_page(args.out, "repeated", document, markdown)
        return
    start = time.perf_counter()
    folds = 1 if args.quick else 5
    repeats = 1 if args.quick else args.repeats
    jobs = [(n, r, k, args.quick) for n in args.datasets for r in range(repeats) for k in range(folds)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(split_record, *job) for job in jobs]
        records = []
        for job, future in zip(jobs, futures, strict=True):
            records.append(future.result())
            print(
                f"{job[0]}: repeat {job[1]} split {job[2]} done ({records[-1]['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    summary = {n: summarise_dataset([r for r in records if r["dataset"] == n], args.bootstrap) for n in args.datasets}
    document = {
        "command": command_line("repeated.py", argv),
        "date": datetime.date.today().isoformat(),
        "repeats": repeats,
        "jobs": args.jobs,
        "bootstrap": args.bootstrap,
        "summary": summary,
        "records": records,
        "wall_seconds": time.perf_counter() - start,
    }
    write_page(args.out, "repeated", document, markdown)


if __name__ == "__main__":
    main()
