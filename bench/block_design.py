"""Which block design is at least as good as its plain model? Measured on validation patients.

    python bench/block_design.py --out docs/benchmarks [--cohorts ...] [--repeats 1] [--folds 5]
        [--jobs 2] [--variants ...] [--name block-design] [--render]

For every panel cohort (``panel.PANEL``) and patient-level split (``repeated.FRACTIONS``, the
splits of ``repeated.split_record``), each modality's plain model (its reference encoder with a
linear head, ``baselines.fit_plain_unimodal``) and one LegoBlock per design variant (``VARIANTS``:
``ModelConfig`` changes) are trained on the training patients with early stopping on the
validation patients, and so are the merges of each variant's blocks. The figures the default is
chosen on are the **validation** metrics (each model scored on the split's validation patients
holding its modality; the merges and ``plain-late`` on every validation patient). Test patients
are never scored here: the chosen design is then evaluated on them by ``bench/panel.py``.

Per variant, block - plain is a paired difference per cohort-modality (the mean over the splits)
and a random-effects mean over the cohorts (``meta.random_effects``, each cohort's mean over its
modalities and splits with a t-based variance).

Writes ``OUT/<name>.json`` and ``OUT/<name>.md`` (``--name``, default ``block-design``).
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

from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.tensors import TensorSet, fit_preprocessors, make_tensor_set, task_for
from fedlego.common.lego import LegoBlock, LegoMerge
from fedlego.common.workflow import scores_of, train_block, unimodal_forward
from fedlego_bench.baselines import MeanOfModels, fit_plain_unimodal
from fedlego_bench.meta import dersimonian_laird
from fedlego_bench.panel import PANEL, in_meta_analysis
from fedlego_bench.quality import baseline_settings, load_benchmark_dataset
from fedlego_bench.repeated import FRACTIONS, SPLIT_SEED_STRIDE
from fedlego_bench.standalone import command_line, write_page

VARIANTS: dict[str, dict[str, Any]] = {
    "method": {"direct": False},
    "spatial": {"direct": False, "frequency": False},
    "direct": {"direct": True},
    "direct-spatial": {"direct": True, "frequency": False},
    "direct-1-update": {"direct": True, "steps": 1},
    "direct-small-latent": {"direct": True, "latent_channels": 8, "latent_dim": 16},
    "direct-no-dropout": {"direct": True, "dropout": 0.0},
}
"""Design variants: ``ModelConfig`` fields changed from the defaults."""


DROP_BELOW = 0.5
"""The drop rule tried: a block whose skill above chance (metric - 0.5) on one half is under this
share of the best block's is left out of the merge (uniform weights over the others)."""
HALF_PAIRS = (
    ("merge-validation-halves", "merge-uniform-halves"),
    ("merge-drop-halves", "merge-uniform-halves"),
    ("merge-drop-halves", "best-block-halves"),
    ("merge-uniform-halves", "best-block-halves"),
    ("merge-validation-halves", "best-block-halves"),
)
"""Cross-fitted comparisons (``cross_fitted_merges``): weighting, and each merge vs the best block."""


def _metric(task, scores: np.ndarray, targets: dict[str, torch.Tensor]) -> float:
    return float(task.metric(scores, targets))


def split_scores(name: str, repeat: int, fold: int, variants: list[str]) -> dict[str, Any]:
    """Validation metrics of the plain models and of every variant's blocks and merges on one split."""
    torch.set_num_threads(1)
    dataset, config = load_benchmark_dataset(name)
    split = dataset_splits(dataset, n_folds=fold + 1, seed=SPLIT_SEED_STRIDE * repeat, fractions=FRACTIONS)[fold]
    preprocessors = fit_preprocessors(dataset, split.train, config.preprocessing, min_cell=config.min_cell)
    task = task_for(dataset.labels, split.train)
    train = make_tensor_set(dataset, preprocessors, split.train)
    validation = make_tensor_set(dataset, preprocessors, split.validation)
    start = time.perf_counter()
    record: dict[str, Any] = {"cohort": name, "repeat": repeat, "fold": fold, "n_validation": len(validation)}
    plain = {m: fit_plain_unimodal(m, train, validation, task, baseline_settings(config)) for m in config.modalities}
    record["plain"] = {
        m: _metric(task, scores_of(p, validation.restrict([m]), task), validation.restrict([m]).targets)
        for m, p in plain.items()
    }
    record["plain-late"] = _metric(task, scores_of(MeanOfModels(plain), validation, task), validation.targets)
    for variant in variants:
        model = replace(config.model, **VARIANTS[variant])
        blocks = {}
        for m in config.modalities:
            kind = dataset.modalities[m].kind
            blocks[m], _ = train_block(m, kind, train, validation, task, model, config.training)
        record[variant] = {
            "block": {
                m: _metric(
                    task,
                    scores_of(b, validation.restrict([m]), task, unimodal_forward(b)),
                    validation.restrict([m]).targets,
                )
                for m, b in blocks.items()
            },
            "merge": _metric(task, scores_of(LegoMerge(blocks), validation, task), validation.targets),
            **cross_fitted_merges(blocks, validation, task, seed=SPLIT_SEED_STRIDE * repeat + fold),
        }
    record["seconds"] = time.perf_counter() - start
    print(f"{name} r{repeat} f{fold}: {record['seconds']:.0f} s", file=sys.stderr, flush=True)
    return record


def cross_fitted_merges(blocks: dict[str, LegoBlock], validation: TensorSet, task, seed: int) -> dict[str, float]:
    """Merge weighting judged without reusing patients: the validation patients are halved; each
    block's score on one half sets the weights (``validation``: max(score - 0.5, 0.01)) and picks
    the best block, and the merges and that block are scored on the other half; the two halves'
    metrics are averaged. ``merge-drop`` leaves out the blocks under ``DROP_BELOW`` of the best
    block's skill on the first half."""
    order = np.random.default_rng(seed).permutation(len(validation))
    half = len(order) // 2
    halves = [validation.subset(np.sort(order[:half])), validation.subset(np.sort(order[half:]))]
    results: dict[str, list[float]] = {
        f"{k}-halves": [] for k in ("merge-uniform", "merge-validation", "merge-drop", "best-block")
    }

    def block_metric(modality: str, data: TensorSet) -> float:
        held = data.restrict([modality])
        block = blocks[modality]
        return _metric(task, scores_of(block, held, task, unimodal_forward(block)), held.targets) if len(held) else 0.5

    for chosen, scored in (halves, halves[::-1]):
        skill = {m: block_metric(m, chosen) for m in blocks}
        skill = {m: score if np.isfinite(score) else 0.5 for m, score in skill.items()}
        weights = {m: max(score - 0.5, 0.01) for m, score in skill.items()}
        best = max(skill, key=skill.get)
        threshold = DROP_BELOW * (skill[best] - 0.5)
        kept = {m: 1.0 if m == best or score - 0.5 >= threshold else 0.0 for m, score in skill.items()}
        merges = (
            ("uniform", LegoMerge(blocks)),
            ("validation", LegoMerge(blocks, weighting=weights)),
            ("drop", LegoMerge(blocks, weighting=kept)),
        )
        for name, merged in merges:
            results[f"merge-{name}-halves"].append(_metric(task, scores_of(merged, scored, task), scored.targets))
        results["best-block-halves"].append(block_metric(best, scored))
    return {k: float(np.nanmean(v)) for k, v in results.items()}


def _t_variance(values: list[float]) -> tuple[float, float]:
    """Mean and corrected resampled variance of per-split values (Nadeau & Bengio 2003: sample
    variance x (1/n + validation share / training share), as the splits' training sets overlap)."""
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    if len(array) < 2:
        return float(array.mean()) if len(array) else float("nan"), float("nan")
    return float(array.mean()), float(array.var(ddof=1) * (1 / len(array) + FRACTIONS[1] / FRACTIONS[0]))


def pooled(estimates: dict[str, tuple[float, float]]) -> dict[str, float] | None:
    """DerSimonian-Laird mean of per-cohort (mean, variance) estimates with a usable variance, over
    the ten panel cohorts (not the derived one, whose patients are whas500's)."""
    kept = [(m, v) for c, (m, v) in estimates.items() if in_meta_analysis(c) and np.isfinite(v) and v > 0]
    if not kept:
        return None
    return dersimonian_laird([m for m, _ in kept], [v for _, v in kept])


def summarise(records: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Per variant: block - plain per cohort-modality and pooled over cohorts, merge - plain-late."""
    cohorts = sorted({r["cohort"] for r in records})
    summary: dict[str, Any] = {}
    for variant in variants:
        per_modality, block_cohorts, merge_cohorts = {}, {}, {}
        for cohort in cohorts:
            rows = [r for r in records if r["cohort"] == cohort]
            diffs_by_split = []
            for modality in rows[0]["plain"]:
                diffs = [r[variant]["block"][modality] - r["plain"][modality] for r in rows]
                per_modality[f"{cohort}:{modality}"] = float(np.nanmean(diffs))
                diffs_by_split.append(diffs)
            block_cohorts[cohort] = _t_variance(list(np.nanmean(np.asarray(diffs_by_split), axis=0)))
            merge_cohorts[cohort] = _t_variance([r[variant]["merge"] - r["plain-late"] for r in rows])
        summary[variant] = {
            "block - plain": {"per_modality": per_modality, "pooled": pooled(block_cohorts)},
            "merge - plain-late": {
                "per_cohort": {c: m for c, (m, _) in merge_cohorts.items()},
                "pooled": pooled(merge_cohorts),
            },
            "worst block - plain": min(
                (v for k, v in per_modality.items() if in_meta_analysis(k.split(":")[0])), default=float("nan")
            ),
        }
        for first, second in HALF_PAIRS:
            rows_by_cohort = {c: [r for r in records if r["cohort"] == c and first in r[variant]] for c in cohorts}
            estimates = {
                c: _t_variance([r[variant][first] - r[variant][second] for r in rows])
                for c, rows in rows_by_cohort.items()
                if rows
            }
            if estimates:
                summary[variant][f"{first} - {second}"] = {
                    "per_cohort": {c: m for c, (m, _) in estimates.items()},
                    "pooled": pooled(estimates),
                }
    summary["paired"] = paired_designs(records, variants, cohorts)
    return summary


def paired_designs(records: list[dict[str, Any]], variants: list[str], cohorts: list[str]) -> dict[str, Any]:
    """Each variant minus the first, paired on the same splits: its blocks (mean over the
    modalities) and its merge, pooled over the cohorts."""
    paired = {}
    reference = variants[0]
    for variant in variants[1:]:
        blocks, merges = {}, {}
        for cohort in cohorts:
            rows = [r for r in records if r["cohort"] == cohort]
            blocks[cohort] = _t_variance(
                [np.mean([r[variant]["block"][m] - r[reference]["block"][m] for m in r["plain"]]) for r in rows]
            )
            merges[cohort] = _t_variance([r[variant]["merge"] - r[reference]["merge"] for r in rows])
        paired[f"{variant} - {reference}"] = {"blocks": pooled(blocks), "merge": pooled(merges)}
    return paired


def _interval(result: dict[str, float] | None) -> str:
    if result is None:
        return "n/a"
    return f"{result['mean']:+.3f} [{result['low']:+.3f}, {result['high']:+.3f}]"


def markdown(document: dict[str, Any]) -> str:
    """The page: per variant the pooled differences, then block - plain per cohort-modality."""
    summary, variants = document["summary"], document["variants"]
    lines = [
        "# Block design: which LegoBlock is as good as its plain model (validation patients)",
        "",
        f"Command: `{document['command']}`  ",
        f"Date: {document['date']}; {document['splits']} splits in {document['minutes']:.0f} min.",
        "",
        "Every figure is measured on the **validation** patients of each split (the patients early",
        "stopping uses; test patients are never scored here). block - plain: the same modality's",
        "LegoBlock minus its plain model (same encoder + linear head, trained the same way); merge -",
        "plain-late: the uniform LegoMerge of the variant's blocks minus the mean of the plain models.",
        "Pooled: random-effects (DerSimonian-Laird) mean over the ten panel cohorts with its 95 %",
        "interval, each cohort's variance the corrected resampled one of its per-split differences",
        "(Nadeau & Bengio: x (1/n + 0.15/0.70)). whas500-noise, made from whas500's patients, is shown",
        "but not pooled; the worst cohort-modality is over the ten cohorts too.",
        "",
        "| variant | changes | block - plain, pooled | worst cohort-modality | merge - plain-late, pooled |",
        "|---|---|---|---|---|",
    ]
    for variant in variants:
        row = summary[variant]
        changes = ", ".join(f"{k}={v}" for k, v in VARIANTS[variant].items())
        lines.append(
            f"| {variant} | {changes} | {_interval(row['block - plain']['pooled'])} | "
            f"{row['worst block - plain']:+.3f} | {_interval(row['merge - plain-late']['pooled'])} |"
        )
    if summary.get("paired"):
        lines += [
            "",
            "## Designs against each other, paired on the same splits (pooled)",
            "",
            "| comparison | blocks (mean over modalities) | uniform merge |",
            "|---|---|---|",
        ]
        for name, row in summary["paired"].items():
            lines.append(f"| {name} | {_interval(row['blocks'])} | {_interval(row['merge'])} |")
    pairs = [f"{a} - {b}" for a, b in HALF_PAIRS if any(f"{a} - {b}" in summary[v] for v in variants)]
    if pairs:
        lines += [
            "",
            "## Merge weighting, cross-fitted on halves of the validation patients",
            "",
            "One half's block scores set the weights and pick the best block; the other half scores them.",
            "",
            "| variant | comparison | pooled | per cohort |",
            "|---|---|---|---|",
        ]
        for variant in variants:
            for pair in pairs:
                if pair in summary[variant]:
                    row = summary[variant][pair]
                    cohorts = ", ".join(f"{c} {m:+.3f}" for c, m in row["per_cohort"].items())
                    lines.append(f"| {variant} | {pair} | {_interval(row['pooled'])} | {cohorts} |")
    lines += ["", "## block - plain per cohort-modality (mean over the splits)", ""]
    lines.append("| cohort:modality | " + " | ".join(variants) + " |")
    lines.append("|---|" + "---|" * len(variants))
    for key in summary[variants[0]]["block - plain"]["per_modality"]:
        values = " | ".join(f"{summary[v]['block - plain']['per_modality'][key]:+.3f}" for v in variants)
        lines.append(f"| {key} | {values} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--cohorts", nargs="+", default=list(PANEL), choices=list(PANEL))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--name", default="block-design", help="stem of the page and its JSON")
    parser.add_argument("--render", action="store_true", help="recompute the summary and page from OUT's JSON")
    args = parser.parse_args(argv)
    if args.render:
        document = json.loads((args.out / f"{args.name}.json").read_text())
        document["summary"] = summarise(document["records"], document["variants"])
        write_page(args.out, args.name, document, markdown)
        return
    start = time.perf_counter()
    tasks = [(c, r, f, args.variants) for c in args.cohorts for r in range(args.repeats) for f in range(args.folds)]
    with ProcessPoolExecutor(args.jobs) as pool:
        records = list(pool.map(split_scores, *zip(*tasks, strict=True)))
    document = {
        "command": command_line("block_design.py", argv),
        "date": datetime.date.today().isoformat(),
        "minutes": (time.perf_counter() - start) / 60,
        "splits": len(records),
        "variants": args.variants,
        "records": records,
        "summary": summarise(records, args.variants),
    }
    write_page(args.out, args.name, document, markdown)


if __name__ == "__main__":
    main()
