"""Quality section of the benchmark suite: the poster's table with baselines, and the ablations.

Everything here runs in this process on CPU with the library (``fedlego.common``), on the same
patient-level folds as ``fedlego centralized`` (5 folds, seeds 0-4, 70/15/15 train/validation/test):

- the table: each modality's block, the prediction-averaging ensemble, LegoMerge, LegoFuse
  (2 epochs), and the baselines of ``bench/baselines.py`` trained on the pooled paired training
  patients (early stopping / penalty choice on validation patients only);
- ablations on the same trained blocks: latent and head merge methods, modalities missing at
  test time (0-80 %); and with retrained blocks: frequency vs spatial domain, overlap between
  and imbalance across the patients of unimodal sites (as ``build_scenario`` assigns them).

Test metrics are on the complete-case test patients of each fold; mean ± sample std over folds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from fedlego.common.centralized import CentralizedConfig, FoldModels, mean_std, train_fold
from fedlego.common.config import FuseConfig, MergeConfig, ModelConfig, TrainConfig
from fedlego.common.data.bundled import load_dataset
from fedlego.common.data.dataset import MultimodalDataset
from fedlego.common.data.preprocess import preprocessor_from_dict
from fedlego.common.data.presets import PRESETS
from fedlego.common.data.scenarios import FoldSplit, build_scenario, dataset_splits, site_dataset, site_split
from fedlego.common.data.synthetic import default_synthetic_modalities, make_synthetic
from fedlego.common.data.tensors import TensorSet, fit_preprocessors, make_tensor_set, task_for
from fedlego.common.lego import FUSE_MODES, LegoBlock, LegoFuse, LegoMerge
from fedlego.common.merging import HEAD_MERGES, LATENT_MERGES
from fedlego.common.tasks import Task
from fedlego.common.training import TrainReport
from fedlego.common.workflow import evaluate_all, fuse_blocks, scores_of, train_block, unimodal_forward
from fedlego_bench.baselines import BASELINES, BaselineConfig, MeanOfModels, fit_baseline, fit_plain_unimodal

Log = Callable[[str], None]
TEST_MISSING_RATES = (0.0, 0.2, 0.4, 0.6, 0.8)
MISSING_DRAWS = 5
HIDDEN_SHARE = "share of modalities hidden"
OVERLAPS = (0.0, 0.5, 1.0)
MERGE_WEIGHTINGS = ("uniform", "samples", "validation")
IMBALANCES = (0.0, 0.5, 0.9)
SITE_ABLATION_DATASETS = ("pbc", "synthetic")
SYNTHETIC_PATIENTS = 300
SYNTHETIC_SEED = 0
"""The synthetic cohort's generator seed (the table's cohort is seed 0)."""


def load_benchmark_dataset(name: str) -> tuple[MultimodalDataset, CentralizedConfig]:
    """A benchmark data set with its modalities and the run settings of ``fedlego centralized``;
    a development panel cohort (``panel.PANEL``) is read from its site folder."""
    from fedlego_bench.panel import PANEL, panel_dataset  # panel imports repeated, which imports this module

    if name in PANEL:
        return panel_dataset(name)
    if name == "synthetic":
        modalities = default_synthetic_modalities(4)
        dataset = make_synthetic(SYNTHETIC_PATIENTS, modalities, task="survival", seed=SYNTHETIC_SEED)
        modalities, preprocessing = list(dataset.modalities), {}
    else:
        dataset = load_dataset(name)
        modalities, preprocessing = list(PRESETS[name].modalities or ()), PRESETS[name].preprocessing
    dataset = dataset.subset(dataset.patient_ids(), modalities)
    return dataset, CentralizedConfig(name, modalities, preprocessing=preprocessing)


# -- evaluation helpers ------------------------------------------------------------------------
def metric(task: Task, scores: np.ndarray, data: TensorSet) -> float:
    """The task metric (c-index or AUC) of scores on a set."""
    return float(task.metric(scores, data.targets))


def ensemble_scores(blocks: dict[str, LegoBlock], data: TensorSet, task: Task) -> np.ndarray:
    """Mean of the blocks' scores over the modalities each patient holds (every row holds one)."""
    sums, counts = None, np.zeros(len(data))
    for modality, block in blocks.items():
        rows = np.flatnonzero(data.present[modality].numpy())
        if rows.size == 0:
            continue
        scores = scores_of(block, data.subset(rows), task, unimodal_forward(block))
        if sums is None:
            sums = np.zeros((len(data), *scores.shape[1:]))
        sums[rows] += scores
        counts[rows] += 1
    return sums / counts.reshape(-1, *([1] * (sums.ndim - 1)))


def drop_modalities(data: TensorSet, rate: float, rng: np.random.Generator) -> TensorSet:
    """The same patients with each modality hidden with probability ``rate`` (at least one kept)."""
    names = sorted(data.present)
    held = torch.stack([data.present[m] for m in names], dim=1).numpy()
    keep = held & (rng.random(held.shape) >= rate)
    for row in np.flatnonzero(~keep.any(axis=1)):
        keep[row, rng.choice(np.flatnonzero(held[row]))] = True
    present = {m: torch.as_tensor(keep[:, j]) for j, m in enumerate(names)}
    return TensorSet(data.ids, data.inputs, present, data.targets)


def summarise_folds(folds: list[dict[str, Any]], key: str) -> Any:
    """Summarise a nested dict of per-fold metrics (same structure in each fold) at ``key``."""

    def walk(items: list[Any]) -> Any:
        if isinstance(items[0], dict):
            return {k: walk([item[k] for item in items]) for k in items[0]}
        return mean_std(items)

    return walk([fold[key] for fold in folds])


# -- one fold ------------------------------------------------------------------------------------
def table_fold(
    dataset: MultimodalDataset,
    config: CentralizedConfig,
    baseline_config: BaselineConfig,
    split: FoldSplit,
    log: Log,
) -> dict[str, Any]:
    """The table, the merge-method ablation and the missing-modality ablation of one fold."""
    start = time.perf_counter()
    fold = train_fold(dataset, config, split, log)
    task, test = fold.task, fold.test
    seconds = {"lego": time.perf_counter() - start}
    models = {k: v["metric"] for k, v in evaluate_all(fold.blocks, fold.merged, fold.fused, test, task).items()}
    baselines, fedavg, failures = {}, {}, {}
    for name in BASELINES:
        begin = time.perf_counter()
        try:
            baselines[name] = fit_baseline(name, fold.paired_train, fold.paired_validation, task, baseline_config)
        except ValueError as error:  # e.g. no event among the paired training patients: recorded, not fatal
            failures[name], models[name] = str(error), float("nan")
            log(f"  fold {split.fold}: baseline {name} failed: {error}")
            continue
        seconds[name] = time.perf_counter() - begin
        models[name] = metric(task, baselines[name].scores(test), test)
        if hasattr(baselines[name], "bytes_per_site"):
            fedavg = {"bytes_per_site": baselines[name].bytes_per_site, "parameters": baselines[name].parameter_count}
    plain = {m: fit_plain_unimodal(m, fold.train, fold.validation, task, baseline_config) for m in fold.blocks}
    for m, model in plain.items():
        models[f"plain:{m}"] = metric(task, scores_of(model, test, task), test)
    models["plain-late"] = metric(task, scores_of(MeanOfModels(plain), test, task), test)
    if dataset.oracle_score is not None and getattr(task, "n_classes", 2) <= 2:
        # the generator's Bayes-optimal score (synthetic cohort): the ceiling any model can reach
        models["oracle"] = metric(task, dataset.oracle_score.reindex(test.ids).to_numpy(), test)
    merge = config.merge

    def merged_metric(latent: str, head: str, weighting: str) -> float:
        return metric(task, scores_of(LegoMerge(fold.blocks, latent, head, weighting), test, task), test)

    merges = {
        latent: {head: merged_metric(latent, head, merge.weighting) for head in HEAD_MERGES} for latent in LATENT_MERGES
    }
    weightings = {w: merged_metric(merge.latent_merge, merge.head_merge, w) for w in MERGE_WEIGHTINGS}
    fuse_modes = fuse_modes_fold(fold, config)
    missing = missing_modality_fold(fold.blocks, fold.merged, fold.fused, baselines, test, task, split.fold)
    log(f"  fold {split.fold}: " + ", ".join(f"{k} {v:.3f}" for k, v in models.items()))
    return {
        "fold": split.fold,
        "n_test": len(test),
        "n_paired_train": len(fold.paired_train),
        "models": models,
        "merge_methods": merges,
        "merge_weighting": weightings,
        "fuse_modes": fuse_modes,
        "missing_at_test": missing,
        "fedavg_early_fusion": fedavg,
        "baseline_failures": failures,
        "seconds": seconds,
    }


def fuse_modes_fold(fold: FoldModels, config: CentralizedConfig) -> dict[str, dict[str, float]]:
    """LegoFuse in every topology on the fold's blocks and paired patients: test metric, and
    whether the fine-tuned model was kept (1) or the untrained one (0: in merge mode the merge)."""
    validation = fold.paired_validation if len(fold.paired_validation) else None
    result = {}
    for mode in FUSE_MODES:
        if mode == config.fuse.mode:
            fused, report = fold.fused, fold.fuse_report
        else:
            fused, report = fuse_blocks(
                fold.blocks, fold.paired_train, validation, fold.task, replace(config.fuse, mode=mode), config.merge
            )
        result[mode] = {
            "metric": metric(fold.task, scores_of(fused, fold.test, fold.task), fold.test),
            "fine_tuned": float(report.best_epoch > 0),
        }
    return result


def missing_modality_fold(
    blocks: dict[str, LegoBlock],
    merged: torch.nn.Module,
    fused: torch.nn.Module,
    baselines: dict[str, Any],
    test: TensorSet,
    task: Task,
    fold: int,
) -> dict[str, dict[str, float]]:
    """Metric of each model when each modality of each test patient is hidden with probability
    ``rate`` (mean over ``MISSING_DRAWS`` random draws, seeded by the fold), and the share of
    modalities actually hidden (lower than ``rate``: every patient keeps one)."""
    rng = np.random.default_rng(1000 + fold)
    result: dict[str, dict[str, float]] = {}
    for rate in TEST_MISSING_RATES:
        draws: dict[str, list[float]] = {HIDDEN_SHARE: []}
        for _ in range(MISSING_DRAWS if rate > 0 else 1):
            hidden = drop_modalities(test, rate, rng)
            draws[HIDDEN_SHARE].append(1.0 - hidden_fraction_kept(hidden))
            scores = {
                "ensemble": ensemble_scores(blocks, hidden, task),
                "merge": scores_of(merged, hidden, task),
                "fuse": scores_of(fused, hidden, task),
                **{name: model.scores(hidden) for name, model in baselines.items()},
            }
            for name, value in scores.items():
                draws.setdefault(name, []).append(metric(task, value, hidden))
        result[f"{rate:.1f}"] = {name: float(np.nanmean(values)) for name, values in draws.items()}
    return result


def hidden_fraction_kept(data: TensorSet) -> float:
    """Share of all (patient, modality) entries still present."""
    return float(torch.stack(list(data.present.values())).float().mean())


def spatial_fold(dataset: MultimodalDataset, config: CentralizedConfig, split: FoldSplit, log: Log) -> dict[str, float]:
    """Blocks, merge and fuse with spatial-domain latent updates (``frequency=False``)."""
    spatial = replace(config, model=replace(config.model, frequency=False))
    fold = train_fold(dataset, spatial, split, lambda message: None)
    evaluated = evaluate_all(fold.blocks, fold.merged, fold.fused, fold.test, fold.task)
    models = {k: v["metric"] for k, v in evaluated.items() if k != "ensemble"}
    log(f"  fold {split.fold} spatial: " + ", ".join(f"{k} {v:.3f}" for k, v in models.items()))
    return models


@dataclass(frozen=True)
class DisjointPaired:
    """The scenario where fusion should pay: a hospital with paired patients that trained no
    block. ``models`` are the fold's models trained without the hospital's patients (their
    ``task`` is the one to use: a survival task's time bins come from those training patients);
    ``hospital`` is the hospital's patients, preprocessed by the blocks' fitted preprocessing."""

    models: FoldModels
    hospital: TensorSet

    def fuse(self, fuse: FuseConfig, merge: MergeConfig) -> tuple[LegoFuse, TrainReport]:
        """LegoFuse of the blocks fine-tuned on the hospital's patients only, under the blocks'
        own task, selected on the fold's paired validation patients where it has any."""
        validation = self.models.paired_validation if len(self.models.paired_validation) else None
        return fuse_blocks(self.models.blocks, self.hospital, validation, self.models.task, fuse, merge)


def disjoint_paired_models(dataset: MultimodalDataset, config: CentralizedConfig, split: FoldSplit) -> DisjointPaired:
    """Half of the fold's paired (complete-case) training patients form a hospital that trains no
    block; the blocks (and the fold's merge and default fuse, on the paired patients left) train
    on the other training patients. Validation and test patients are the fold's."""
    complete = set(dataset.complete_case_ids(config.modalities))
    paired = sorted(i for i in split.train if i in complete)
    rng = np.random.default_rng(2000 + split.fold)
    hospital = sorted(rng.choice(paired, size=len(paired) // 2, replace=False).tolist())
    held = set(hospital)
    fold = train_fold(dataset, config, replace(split, train=[i for i in split.train if i not in held]), lambda _: None)
    preprocessors = {m: preprocessor_from_dict(b.preprocessing) for m, b in fold.blocks.items()}
    return DisjointPaired(fold, make_tensor_set(dataset, preprocessors, hospital))


def disjoint_paired_fold(
    dataset: MultimodalDataset, config: CentralizedConfig, split: FoldSplit, log: Log
) -> dict[str, float]:
    """``disjoint_paired_models``, LegoFuse fine-tuned on the hospital's patients only in every
    topology. Test metric of the best block, the merge and each fuse."""
    scenario = disjoint_paired_models(dataset, config, split)
    fold = scenario.models
    task, test = fold.task, fold.test
    result = {
        "best block": max(
            metric(task, scores_of(b, test, task, unimodal_forward(b)), test) for b in fold.blocks.values()
        ),
        "merge": metric(task, scores_of(fold.merged, test, task), test),
        "hospital patients": float(len(scenario.hospital)),
    }
    for mode in FUSE_MODES:
        fused, report = scenario.fuse(replace(config.fuse, mode=mode), config.merge)
        result[f"fuse ({mode})"] = metric(task, scores_of(fused, test, task), test)
        result[f"fine-tuned ({mode})"] = float(report.best_epoch > 0)
    log(f"  fold {split.fold} disjoint paired: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result


def unimodal_site_blocks(
    dataset: MultimodalDataset, config: CentralizedConfig, split: FoldSplit, overlap: float, imbalance: float
) -> tuple[Task, dict[str, LegoBlock], dict[str, Any]]:
    """Blocks trained as unimodal sites would train them (one site per modality, patients
    assigned by ``build_scenario`` with the given overlap and imbalance, no paired site; each
    site fits its own preprocessing): the task, the blocks and their preprocessors."""
    scenario = build_scenario(dataset, paired_sites=0, overlap=overlap, imbalance=imbalance, seed=split.fold)
    task = task_for(dataset.labels, split.train)
    blocks, preprocessors = {}, {}
    for site in scenario.sites:
        (modality,) = site.modalities
        roles = site_split(site, dataset, split)
        local = site_dataset(dataset, site)
        preprocessors[modality] = fit_preprocessors(local, roles["train"], config.preprocessing)[modality]
        train = make_tensor_set(local, {modality: preprocessors[modality]}, roles["train"])
        validation = make_tensor_set(local, {modality: preprocessors[modality]}, roles["validation"])
        blocks[modality], _ = train_block(
            modality,
            dataset.modalities[modality].kind,
            train,
            validation,
            task,
            config.model,
            config.training,
            preprocessors[modality].to_dict(),
        )
    return task, blocks, preprocessors


def site_blocks_fold(
    dataset: MultimodalDataset,
    config: CentralizedConfig,
    split: FoldSplit,
    overlap: float,
    imbalance: float,
) -> dict[str, float]:
    """Blocks of unimodal sites (``unimodal_site_blocks``), merged; evaluated on the complete-case
    test patients."""
    task, blocks, preprocessors = unimodal_site_blocks(dataset, config, split, overlap, imbalance)
    complete = set(dataset.complete_case_ids(config.modalities))
    test = make_tensor_set(dataset, preprocessors, [i for i in split.test if i in complete])
    models = {f"n_train:{m}": float(b.n_samples) for m, b in blocks.items()} | {
        f"block:{m}": metric(task, scores_of(b, test, task, unimodal_forward(b)), test) for m, b in blocks.items()
    }
    models["ensemble"] = metric(task, ensemble_scores(blocks, test, task), test)
    for weighting in ("uniform", "samples"):
        merged = LegoMerge(blocks, config.merge.latent_merge, config.merge.head_merge, weighting)
        models[f"merge:{weighting}"] = metric(task, scores_of(merged, test, task), test)
    return models


# -- the section -----------------------------------------------------------------------------------
def quick_config(config: CentralizedConfig) -> CentralizedConfig:
    """Small settings for a smoke run of the suite (not for figures)."""
    return replace(
        config, training=TrainConfig(epochs=2, patience=2), model=ModelConfig(latent_channels=8, latent_dim=8)
    )


def baseline_settings(config: CentralizedConfig, quick: bool = False) -> BaselineConfig:
    """The baselines' settings for a run: its modalities, seed and training; a smoke run
    (``quick``) gives FedAvg of early fusion 2 rounds of 1 local epoch."""
    settings = BaselineConfig(modalities=config.modalities, seed=config.seed, training=config.training)
    return replace(settings, fedavg_rounds=2, fedavg_local_epochs=1) if quick else settings


def run_dataset(name: str, quick: bool, log: Log) -> dict[str, Any]:
    """Every fold of one data set: table, merge methods, missing modalities, spatial domain,
    and (for ``SITE_ABLATION_DATASETS``) overlap and imbalance."""
    dataset, config = load_benchmark_dataset(name)
    if quick:
        config = quick_config(config)
    baseline_config = baseline_settings(config, quick)
    splits = dataset_splits(dataset, n_folds=1 if quick else config.n_folds, seed=config.seed)
    start = time.perf_counter()
    folds = []
    for split in splits:
        log(f"{name}: fold {split.fold + 1}/{len(splits)}")
        record = table_fold(dataset, config, baseline_config, split, log)
        record["spatial"] = spatial_fold(dataset, config, split, log)
        record["disjoint_paired"] = disjoint_paired_fold(dataset, config, split, log)
        if name in SITE_ABLATION_DATASETS:
            record["overlap"] = {f"{o:.1f}": site_blocks_fold(dataset, config, split, o, 0.0) for o in OVERLAPS}
            # imbalance 0 at overlap 0 is the overlap-0 run itself (same scenario, same seed)
            record["imbalance"] = {
                f"{i:.1f}": site_blocks_fold(dataset, config, split, 0.0, i) if i else record["overlap"]["0.0"]
                for i in IMBALANCES
            }
        folds.append(record)
    summary = {
        key: summarise_folds(folds, key)
        for key in (
            "models",
            "merge_methods",
            "merge_weighting",
            "fuse_modes",
            "missing_at_test",
            "spatial",
            "disjoint_paired",
            "overlap",
            "imbalance",
        )
        if key in folds[0]
    }
    return {
        "dataset": {
            "name": name,
            "task": dataset.labels.task,
            "n_patients": len(dataset.patient_ids()),
            "n_complete": len(dataset.complete_case_ids(config.modalities)),
            "modalities": {m: dataset.modalities[m].kind for m in config.modalities},
        },
        "metric": "c-index" if dataset.labels.task == "survival" else "AUC",
        "settings": {
            "folds": len(splits),
            "latent_merge": config.merge.latent_merge,
            "head_merge": config.merge.head_merge,
            "weighting": config.merge.weighting,
            "fuse": f"{config.fuse.mode}, {config.fuse.epochs} epochs",
            "baselines": {
                "pca_components": baseline_config.pca_components,
                "fedavg_sites": baseline_config.fedavg_sites,
                "fedavg_rounds": baseline_config.fedavg_rounds,
                "fedavg_local_epochs": baseline_config.fedavg_local_epochs,
            },
        },
        "summary": summary,
        "folds": folds,
        "wall_seconds": time.perf_counter() - start,
    }


def run_quality(datasets: list[str], quick: bool = False, log: Log = print) -> dict[str, Any]:
    """The quality section for the given data sets (``tcga-acc``, ``pbc``, ``synthetic``).

    Torch runs on one thread: these models are tiny, and a second thread only adds contention."""
    torch.set_num_threads(1)
    return {name: run_dataset(name, quick, log) for name in datasets}
