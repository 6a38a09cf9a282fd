"""The centralized MM-Lego pipeline: the same folds, blocks, merge and fuse as the federation,
on one machine. Used as the baseline the federation must match and by users without Flower."""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fedlego.common.config import FuseConfig, MergeConfig, ModelConfig, PrivacyConfig, RunConfig, TrainConfig
from fedlego.common.data.dataset import MultimodalDataset
from fedlego.common.data.scenarios import FoldSplit, dataset_splits
from fedlego.common.data.tensors import TensorSet, fit_preprocessors, make_tensor_set, task_for
from fedlego.common.disclosure import DEFAULT_MIN_CELL
from fedlego.common.lego import LegoBlock, LegoFuse, LegoMerge
from fedlego.common.tasks import Task
from fedlego.common.training import TrainReport, bar_disabled
from fedlego.common.workflow import evaluate_all, fuse_blocks, train_block


@dataclass
class CentralizedConfig:
    """Everything that defines a centralized run (stored in results.json)."""

    dataset: str
    modalities: list[str]
    n_folds: int = 5
    seed: int = 0
    merge: MergeConfig = field(default_factory=MergeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    preprocessing: dict[str, dict[str, Any]] = field(default_factory=dict)
    privacy: PrivacyConfig | None = None
    """DP-SGD for block training (None: plain training); see ``common.privacy``."""
    source: dict[str, str] = field(default_factory=dict)
    """Where the cohort came from when it is not the bundled ``dataset`` (a site folder and its hash)."""
    min_cell: int = DEFAULT_MIN_CELL
    """Disclosure threshold of the fitted preprocessing, as a site would apply it (``common.disclosure``)."""

    def __post_init__(self) -> None:
        # one seed for everything, as RunConfig; copies, so that a config sharing these sections
        # (dataclasses.replace) keeps its own seed
        self.model = replace(self.model, seed=self.seed)
        self.training = replace(self.training, seed=self.seed)
        self.fuse = replace(self.fuse, seed=self.seed)

    @classmethod
    def from_run(
        cls,
        run: RunConfig,
        modalities: list[str],
        n_folds: int = 5,
        preprocessing: dict[str, dict[str, Any]] | None = None,
    ) -> CentralizedConfig:
        """The centralized pipeline with a run configuration's sections (shared with federations)."""
        return cls(
            dataset=run.scenario.dataset,
            modalities=modalities,
            n_folds=n_folds,
            seed=run.seed,
            merge=run.merge,
            model=run.model,
            training=run.training,
            fuse=run.fuse,
            preprocessing=dict(preprocessing or {}),
            privacy=run.block_privacy(),
            min_cell=run.disclosure.min_cell,
        )


@dataclass
class FoldModels:
    """What one fold trains: tensors, task, blocks, merge, fuse (reused by benchmarks and ablations)."""

    task: Task
    test: TensorSet
    """Test patients holding every modality of the run."""
    train: TensorSet
    """Every training patient (the blocks' training data)."""
    validation: TensorSet
    paired_train: TensorSet
    paired_validation: TensorSet
    blocks: dict[str, LegoBlock]
    block_reports: dict[str, dict[str, Any]]
    merged: LegoMerge
    fused: LegoFuse
    fuse_report: TrainReport


def train_fold(
    dataset: MultimodalDataset,
    config: CentralizedConfig,
    split: FoldSplit,
    log: Callable[[str], None],
    progress: bool | None = False,
) -> FoldModels:
    """Fit preprocessing and blocks on the fold's training patients, merge them, fuse them on the
    paired training patients (validation patients only for early stopping)."""
    torch.manual_seed(config.seed + split.fold)
    preprocessors = fit_preprocessors(dataset, split.train, config.preprocessing, config.min_cell)
    task = task_for(dataset.labels, split.train)
    train = make_tensor_set(dataset, preprocessors, split.train)
    validation = make_tensor_set(dataset, preprocessors, split.validation)
    complete = set(dataset.complete_case_ids(config.modalities))
    test = make_tensor_set(dataset, preprocessors, [i for i in split.test if i in complete])
    blocks, reports = {}, {}
    for modality in config.modalities:
        start = time.perf_counter()
        blocks[modality], report = train_block(
            modality,
            dataset.modalities[modality].kind,
            train,
            validation,
            task,
            config.model,
            config.training,
            preprocessors[modality].to_dict(),
            progress,
            privacy=config.privacy,
        )
        reports[modality] = {
            "best_epoch": report.best_epoch,
            "seconds": time.perf_counter() - start,
            "n_train": blocks[modality].n_samples,
        }
        if report.privacy is not None:
            reports[modality]["privacy"] = report.privacy
        log(
            f"  fold {split.fold}: block {modality} trained on {blocks[modality].n_samples} patients "
            f"(best epoch {report.best_epoch}, validation {task.metric_name} "
            f"{blocks[modality].validation_score:.3f})"
        )
    merged = LegoMerge(blocks, config.merge.latent_merge, config.merge.head_merge, config.merge.weighting)
    paired_train = train.subset([i for i, pid in enumerate(train.ids) if pid in complete])
    paired_validation = validation.subset([i for i, pid in enumerate(validation.ids) if pid in complete])
    fused, fuse_report = fuse_blocks(
        blocks,
        paired_train,
        paired_validation if len(paired_validation) else None,
        task,
        config.fuse,
        config.merge,
        progress,
    )
    return FoldModels(
        task,
        test,
        train,
        validation,
        paired_train,
        paired_validation,
        blocks,
        reports,
        merged,
        fused,
        fuse_report,
    )


def run_fold(
    dataset: MultimodalDataset,
    config: CentralizedConfig,
    split: FoldSplit,
    log: Callable[[str], None],
    progress: bool | None = False,
) -> dict[str, Any]:
    """One fold: train its models (``train_fold``), evaluate them on the complete-case test patients."""
    fold = train_fold(dataset, config, split, log, progress)
    results = evaluate_all(fold.blocks, fold.merged, fold.fused, fold.test, fold.task)
    validation_results = (
        evaluate_all(fold.blocks, fold.merged, fold.fused, fold.paired_validation, fold.task)
        if len(fold.paired_validation)
        else {}
    )
    log(f"  fold {split.fold}: " + ", ".join(f"{k} {v['metric']:.3f}" for k, v in results.items()))
    return {
        "fold": split.fold,
        "n_train": len(split.train),
        "n_validation": len(split.validation),
        "n_test": len(fold.test),
        "n_paired_train": len(fold.paired_train),
        "blocks": fold.block_reports,
        "fuse": {
            "best_epoch": fold.fuse_report.best_epoch,
            "budget_from": "validation" if fold.fuse_report.inner_cv_loss is None else "inner-cv",
            "inner_cv_loss": fold.fuse_report.inner_cv_loss,
            **fold.fused.parameter_counts(),
        },
        "models": results,
        "validation_models": validation_results,
    }


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation of per-fold values, NaN folds left out (``n_folds`` says
    how many folds counted)."""
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    return {
        "mean": float(array.mean()) if array.size else float("nan"),
        "std": float(array.std(ddof=1)) if array.size > 1 else float("nan"),
        "n_folds": int(array.size),
    }


def summarise(folds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation over folds of every model's metric (NaN folds skipped)."""
    return {name: mean_std([f["models"][name]["metric"] for f in folds]) for name in folds[0]["models"]}


def best_block_mean(summary: dict[str, dict[str, float]]) -> float:
    """The highest mean metric of a single-modality block."""
    return max(v["mean"] for k, v in summary.items() if k.startswith("block:"))


def uplift(summary: dict[str, dict[str, float]], model: str = "merge") -> float:
    """Relative gain (%) of a model's mean metric over the best single block's."""
    best = best_block_mean(summary)
    return 100.0 * (summary[model]["mean"] - best) / best


def format_table(summary: dict[str, dict[str, float]], metric_name: str, title: str) -> str:
    """The poster-shaped table: blocks, ensemble, merge, uplift, fuse."""

    def cell(name: str) -> str:
        v = summary[name]
        std = "n/a" if math.isnan(v["std"]) else f"{v['std']:.3f}"
        return f"{v['mean']:.3f} ± {std}"

    rows = [(f"LegoBlock ({k.split(':', 1)[1]})", cell(k)) for k in summary if k.startswith("block:")]
    rows.append(("Ensemble (mean prediction)", cell("ensemble")))
    rows.append(("LegoMerge", cell("merge")))
    rows.append(("Uplift (merge vs best block)", f"{uplift(summary, 'merge'):+.1f}%"))
    if "fuse" in summary:
        rows.append(("LegoFuse", cell("fuse")))
        rows.append(("Uplift (fuse vs best block)", f"{uplift(summary, 'fuse'):+.1f}%"))
    width = max(len(r[0]) for r in rows)
    lines = [title, f"{'model'.ljust(width)}  {metric_name} (mean ± std over folds)", "-" * (width + 30)]
    lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
    return "\n".join(lines)


def fuse_note(folds: list[dict[str, Any]]) -> str:
    """What LegoFuse kept over the folds: how many folds fine-tuned (the others are the untrained
    model: in ``merge`` mode, the merge itself) and how the budget was chosen."""
    tuned = sum(f["fuse"]["best_epoch"] > 0 for f in folds)
    inner = sum(f["fuse"].get("budget_from") == "inner-cv" for f in folds)
    return (
        f"LegoFuse kept fine-tuning in {tuned} of {len(folds)} folds (the others keep the untrained model); "
        f"budget by inner cross-validation in {inner} folds (few validation events), on validation patients "
        f"in {len(folds) - inner}"
    )


def run_centralized(
    dataset: MultimodalDataset,
    config: CentralizedConfig,
    out_dir: Path | None = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
    progress: bool | None = False,
) -> dict[str, Any]:
    """All folds; writes ``out_dir/results.json`` when given, returns the same document.
    ``progress``: bars for folds and epochs (None: only on a terminal)."""
    missing = [m for m in config.modalities if m not in dataset.modalities]
    if missing:
        raise ValueError(f"dataset {dataset.name!r} has no modalities {missing}; it has {sorted(dataset.modalities)}")
    dataset = dataset.subset(dataset.patient_ids(), config.modalities)
    splits = dataset_splits(dataset, n_folds=config.n_folds, seed=config.seed)
    start = time.perf_counter()
    folds = []
    bar = tqdm(splits, desc="folds", unit="fold", disable=bar_disabled(progress))
    say = log if bar.disable else lambda message: bar.write(message, file=sys.stderr)
    for split in bar:
        say(
            f"fold {split.fold + 1}/{len(splits)}: {len(split.train)} train, "
            f"{len(split.validation)} validation, {len(split.test)} test patients"
        )
        folds.append(run_fold(dataset, config, split, say, progress))
    summary = summarise(folds)
    metric_name = "c-index" if dataset.labels.task == "survival" else "AUC"
    document = {
        "kind": "centralized",
        "config": asdict(config),
        "dataset": {
            "name": dataset.name,
            "source": config.source or {"source": "bundled", "dataset": config.dataset},
            "task": dataset.labels.task,
            "n_patients": len(dataset.patient_ids()),
            "n_complete": len(dataset.complete_case_ids(config.modalities)),
        },
        "metric": metric_name,
        "folds": folds,
        "summary": summary,
        "uplift_merge_vs_best_block_percent": uplift(summary, "merge"),
        "uplift_fuse_vs_best_block_percent": uplift(summary, "fuse"),
        "wall_seconds": time.perf_counter() - start,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
        },
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(document, indent=2, allow_nan=True))
    return document
