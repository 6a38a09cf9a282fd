"""The steps a site or the centralized pipeline runs: build and train a block, fuse, evaluate.

Each step is one function over ``TensorSet``s so that the centralized pipeline and the
federated sites share exactly the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedlego.common.config import FuseConfig, MergeConfig, ModelConfig, PrivacyConfig, TrainConfig
from fedlego.common.data.tensors import TensorSet
from fedlego.common.encoders import build_encoder, encoder_spec, reference_encoder_spec
from fedlego.common.lego import LegoBlock, LegoFuse, LegoMerge
from fedlego.common.model_store import add_to_store, load_encoder_weights, read_weights
from fedlego.common.privacy import fit_private
from fedlego.common.tasks import Task, average_scores
from fedlego.common.training import TrainReport, evaluate_loss, fit, predict


def build_block(
    modality: str,
    kind: str,
    example: dict[str, torch.Tensor],
    task: Task,
    config: ModelConfig,
    encoder: Mapping[str, Any] | None = None,
) -> LegoBlock:
    """A fresh block, seeded for reproducibility, with the reference encoder for ``kind`` or the
    named ``encoder`` (``{"name": ..., "kwargs": {...}}``: built in, registered or a plugin)."""
    torch.manual_seed(config.seed)
    if encoder is None:
        spec = reference_encoder_spec(kind, example, width=config.encoder_width, dropout=config.dropout)
    else:
        spec = encoder_spec(str(encoder["name"]), dict(encoder.get("kwargs") or {}), example)
    built = build_encoder(spec, config.max_encoder_parameters)
    weights = encoder.get("weights") if encoder is not None else None
    if weights:
        load_encoder_weights(built, read_weights(Path(weights)), f"{modality}: {weights}")
    block = LegoBlock(
        modality,
        built,
        config.contract(task),
        example,
        steps=config.steps,
        heads=config.heads,
        head_dim=config.head_dim,
        frequency=config.frequency,
        direct=config.direct,
        dropout=config.dropout,
        encoder_spec=spec,
    )
    if encoder is not None and encoder.get("frozen"):
        block.freeze_encoder()
        if weights and not encoder.get("ship_weights"):
            block.encoder_weights = add_to_store(Path(weights))
    return block


def unimodal_forward(block: LegoBlock):
    """Adapter: a block called on a multimodal dict uses only its own modality."""
    return lambda inputs: block(inputs[block.modality])


def train_block(
    modality: str,
    kind: str,
    train: TensorSet,
    validation: TensorSet,
    task: Task,
    model_config: ModelConfig,
    train_config: TrainConfig,
    preprocessing: dict[str, Any] | None = None,
    progress: bool | None = False,
    privacy: PrivacyConfig | None = None,
    encoder: Mapping[str, Any] | None = None,
) -> tuple[LegoBlock, TrainReport]:
    """Train one modality's block on the patients holding it; early stopping on validation.
    ``encoder`` names another encoder than the kind's reference one (see ``build_block``).

    ``preprocessing`` is the fitted preprocessor state that produced the tensors; it is stored
    with the block. ``privacy`` (enabled): DP-SGD instead of plain training (see
    ``common.privacy``); the spent epsilon and delta are in ``report.privacy``. A large cohort
    trains within ``train_config.max_steps`` (``TrainConfig.within_step_budget``)."""
    train_m = train.restrict([modality])
    validation_m = validation.restrict([modality])
    if len(train_m) == 0:
        raise ValueError(f"no training patient holds modality {modality!r}")
    train_config = train_config.within_step_budget(len(train_m))
    example = {k: v[:2] for k, v in train_m.inputs[modality].items()}
    block = build_block(modality, kind, example, task, model_config, encoder)
    if privacy is not None and privacy.enabled:
        report = fit_private(
            block,
            modality,
            train_m,
            validation_m if len(validation_m) else None,
            task,
            train_config,
            privacy,
            forward=unimodal_forward(block),
            description=f"block {modality} (DP)",
            progress=progress,
        )
    else:
        report = fit(
            block,
            train_m,
            validation_m if len(validation_m) else None,
            task,
            train_config,
            forward=unimodal_forward(block),
            description=f"block {modality}",
            progress=progress,
        )
    block.n_samples = len(train_m)
    block.preprocessing = preprocessing
    if len(validation_m):
        block.validation_score = evaluate(block, validation_m, task, unimodal_forward(block))["metric"]
    return block, report


def fuse_blocks(
    blocks: dict[str, LegoBlock],
    train: TensorSet,
    validation: TensorSet | None,
    task: Task,
    config: FuseConfig,
    merge: MergeConfig | None = None,
    progress: bool | None = False,
) -> tuple[LegoFuse, TrainReport]:
    """LegoFuse of the blocks (``fuse_model``), fine-tuned for a few epochs on the paired training
    patients; with validation patients the untrained model (in ``merge`` mode: the merge) is kept
    unless an epoch lowers the validation loss by ``config.min_improvement``. With fewer than
    ``config.inner_cv_below`` validation events the epoch budget comes from inner cross-validation
    on the training patients instead (``inner_cv_epochs``), under the same margin."""
    merge = merge or MergeConfig()
    training = TrainConfig(
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        patience=config.epochs,
        seed=config.seed,
        keep_initial=True,
        min_improvement=config.min_improvement,
        weight_decay=fuse_weight_decay(config),
    )
    few_events = config.inner_cv_below and (
        validation is None or task.events(validation.targets) < config.inner_cv_below
    )
    if few_events and len(train) >= 2 * config.inner_folds:
        epochs, curve = inner_cv_epochs(blocks, train, task, config, merge, training)
        model = fuse_model(blocks, config, merge)
        training = replace(training, epochs=epochs, keep_initial=False)
        if epochs:
            fit(model, train, None, task, training, description="fuse", regulariser=model.anchor_penalty)
        return model, TrainReport(best_epoch=epochs, best_validation_loss=curve[epochs], inner_cv_loss=curve)
    model = fuse_model(blocks, config, merge)
    report = fit(
        model,
        train,
        validation,
        task,
        training,
        description="fuse",
        progress=progress,
        regulariser=model.anchor_penalty,
    )
    return model, report


def inner_cv_epochs(
    blocks: dict[str, LegoBlock],
    train: TensorSet,
    task: Task,
    config: FuseConfig,
    merge: MergeConfig,
    training: TrainConfig,
) -> tuple[int, list[float]]:
    """The fine-tuning budget (0 to ``config.epochs``) by ``config.inner_folds``-fold
    cross-validation on the training patients: each inner fold fine-tunes a fresh LegoFuse on the
    others and records its loss after every epoch; the budget of lowest mean loss wins, and leaves
    0 (the untrained model) only when it beats that by ``config.min_improvement``. Returns the
    budget and the mean loss curve (index = epochs)."""
    rows = np.random.default_rng(config.seed).permutation(len(train))
    curves = []
    for held in np.array_split(rows, config.inner_folds):
        inner_train, inner_validation = train.subset(np.setdiff1d(rows, held)), train.subset(held)
        model = fuse_model(blocks, config, merge)
        untrained = evaluate_loss(model, inner_validation, task)
        report = fit(
            model,
            inner_train,
            inner_validation,
            task,
            replace(training, keep_initial=False),
            description="fuse (inner cv)",
            regulariser=model.anchor_penalty,
        )
        curves.append([untrained, *report.validation_loss])  # patience = epochs: every epoch runs
    curve = [float(v) for v in np.nanmean(np.asarray(curves, dtype=float), axis=0)]
    best = int(np.argmin(curve[1:])) + 1 if config.epochs else 0
    if not best or curve[best] >= curve[0] - config.min_improvement * abs(curve[0]):
        best = 0
    return best, curve


def fuse_model(blocks: Mapping[str, LegoBlock], config: FuseConfig, merge: MergeConfig) -> LegoFuse:
    """The untrained LegoFuse of the blocks as a run's settings describe it."""
    return LegoFuse(
        blocks,
        config.mode,
        head_merge=merge.head_merge,
        weighting=merge.weighting,
        latent_merge=merge.latent_merge,
        freeze_encoders=config.freeze_encoders,
        anchor=config.anchor if config.mode == "merge" else 0.0,
    )


def fuse_weight_decay(config: FuseConfig, otherwise: float = TrainConfig.weight_decay) -> float:
    """Weight decay of LegoFuse training: none in ``merge`` mode (the anchor penalty pulls toward
    the merged weights instead of toward zero), ``otherwise`` in the other modes."""
    return 0.0 if config.mode == "merge" else otherwise


def scores_of(model: nn.Module, data: TensorSet, task: Task, forward=None) -> np.ndarray:
    """Task scores (risk or probabilities) of every row of ``data``."""
    return task.scores(predict(model, data, forward))


def evaluate(model: nn.Module, data: TensorSet, task: Task, forward=None) -> dict[str, float]:
    """The task metric of a model on a set, the number of patients, and the pairs it compared
    (``PairCounts.to_dict``: what a federation pools over sites, with its interval)."""
    return score_metrics(scores_of(model, data, task, forward), data, task)


def score_metrics(scores: np.ndarray, data: TensorSet, task: Task) -> dict[str, float]:
    """``evaluate`` from scores already computed on ``data``."""
    pairs = task.pair_counts(scores, data.targets)
    return {"metric": task.metric(scores, data.targets), "n": len(data), **pairs.to_dict()}


def evaluate_all(
    blocks: dict[str, LegoBlock],
    merged: LegoMerge,
    fused: LegoFuse | None,
    test: TensorSet,
    task: Task,
) -> dict[str, dict[str, float]]:
    """Every block, the prediction-averaging ensemble, the merge and the fuse on one test set
    (patients holding every modality, so that all rows are scored on the same patients)."""
    results: dict[str, dict[str, float]] = {}
    block_scores = {}
    for modality, block in blocks.items():
        block_scores[modality] = scores_of(block, test, task, unimodal_forward(block))
        results[f"block:{modality}"] = {"metric": task.metric(block_scores[modality], test.targets), "n": len(test)}
    ensemble = average_scores(list(block_scores.values()))
    results["ensemble"] = {"metric": task.metric(ensemble, test.targets), "n": len(test)}
    results["merge"] = evaluate(merged, test, task)
    if fused is not None:
        results["fuse"] = evaluate(fused, test, task)
    return results
