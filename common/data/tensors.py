"""From a cohort and fitted preprocessors to the tensors the training loop consumes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedlego.common.data.dataset import Labels, MultimodalDataset
from fedlego.common.data.preprocess import make_preprocessor
from fedlego.common.tasks import ClassificationTask, SurvivalTask, Targets, Task
from fedlego.common.training import TensorSet


def targets_for(labels: Labels, ids: Sequence[str]) -> Targets:
    """Target tensors of the given patients, in order."""
    table = labels.table.loc[list(ids)]
    if labels.task == "survival":
        return {
            "time": torch.tensor(table["time"].to_numpy(dtype=np.float32)),
            "event": torch.tensor(table["event"].to_numpy(dtype=np.int64)),
        }
    return {"label": torch.tensor(table["label"].to_numpy(dtype=np.int64))}


def task_for(labels: Labels, train_ids: Sequence[str], n_bins: int = 4) -> Task:
    """The task, with survival bins fitted on the training patients only."""
    if labels.task == "survival":
        table = labels.table.loc[list(train_ids)]
        return SurvivalTask.from_training(table["time"].to_numpy(), table["event"].to_numpy(), n_bins)
    return ClassificationTask(labels.n_classes)


def fit_preprocessors(
    dataset: MultimodalDataset,
    train_ids: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """One preprocessor per modality, fitted on the training patients holding that modality."""
    options = options or {}
    fitted = {}
    train = set(train_ids)
    for name, modality in dataset.modalities.items():
        ids = [i for i in modality.patient_ids() if i in train]
        if not ids:
            raise ValueError(f"no training patient holds modality {name!r} ({modality.source})")
        fitted[name] = make_preprocessor(modality.kind, **dict(options.get(name, {}))).fit(modality, ids)
    return fitted


def make_tensor_set(dataset: MultimodalDataset, preprocessors: Mapping[str, Any], ids: Sequence[str]) -> TensorSet:
    """Transform every modality of the given patients with already-fitted preprocessors."""
    ids = list(ids)
    inputs, present = {}, {}
    for name, preprocessor in preprocessors.items():
        tensors, mask = preprocessor.transform(dataset.modalities[name], ids)
        inputs[name] = tensors
        present[name] = torch.as_tensor(np.asarray(mask, dtype=bool))
    return TensorSet(ids, inputs, present, targets_for(dataset.labels, ids))
