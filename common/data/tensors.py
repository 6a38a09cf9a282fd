"""From a cohort and fitted preprocessors to the tensors the training loop consumes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedlego.common.data.dataset import Labels, MultimodalDataset
from fedlego.common.data.preprocess import make_preprocessor
from fedlego.common.tasks import ClassificationTask, SurvivalTask, Targets, Task

Batch = tuple[dict[str, dict[str, torch.Tensor] | None], Targets]


@dataclass
class TensorSet:
    """Tensors of some patients: ``inputs[modality][key]`` and ``present[modality]`` have one row
    per patient (rows of absent patients are ignored), ``targets`` one entry per patient."""

    ids: list[str]
    inputs: dict[str, dict[str, torch.Tensor]]
    present: dict[str, torch.Tensor]
    targets: Targets

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray | list[int]) -> TensorSet:
        """The same data for some rows only."""
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return TensorSet(
            ids=[self.ids[i] for i in index.tolist()],
            inputs={m: {k: v[index] for k, v in t.items()} for m, t in self.inputs.items()},
            present={m: p[index] for m, p in self.present.items()},
            targets={k: v[index] for k, v in self.targets.items()},
        )

    def restrict(self, modalities: list[str]) -> TensorSet:
        """Only some modalities, and only the patients holding at least one of them."""
        present = torch.zeros(len(self), dtype=torch.bool)
        for m in modalities:
            present |= self.present[m]
        kept = TensorSet(
            self.ids,
            {m: self.inputs[m] for m in modalities},
            {m: self.present[m] for m in modalities},
            self.targets,
        )
        return kept.subset(torch.nonzero(present).squeeze(1).numpy())

    def patterns(self) -> dict[tuple[str, ...], np.ndarray]:
        """Rows grouped by the tuple of modalities they hold (rows holding none are dropped)."""
        names = sorted(self.present)
        matrix = torch.stack([self.present[m] for m in names], dim=1).numpy() if names else np.zeros((len(self), 0))
        groups: dict[tuple[str, ...], list[int]] = {}
        for row, flags in enumerate(matrix):
            key = tuple(m for m, flag in zip(names, flags, strict=True) if flag)
            if key:
                groups.setdefault(key, []).append(row)
        return {k: np.asarray(v) for k, v in groups.items()}

    def batch(self, rows: np.ndarray, modalities: tuple[str, ...]) -> Batch:
        """Inputs of the given rows (all holding ``modalities``) and their targets."""
        index = torch.as_tensor(rows, dtype=torch.int64)
        inputs: dict[str, dict[str, torch.Tensor] | None] = dict.fromkeys(self.inputs)
        for m in modalities:
            inputs[m] = cut_padding({k: v[index] for k, v in self.inputs[m].items()})
        return inputs, {k: v[index] for k, v in self.targets.items()}

    def batches(
        self, batch_size: int, generator: np.random.Generator | None = None
    ) -> Iterator[tuple[np.ndarray, Batch]]:
        """Batches within presence patterns; shuffled when a generator is given."""
        chunks: list[tuple[tuple[str, ...], np.ndarray]] = []
        for key, rows in self.patterns().items():
            order = generator.permutation(rows) if generator is not None else rows
            chunks += [(key, order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
        if generator is not None:
            chunks = [chunks[i] for i in generator.permutation(len(chunks))]
        for key, rows in chunks:
            yield rows, self.batch(rows, key)


def cut_padding(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch of a padded modality (one with a ``mask`` (b, L) of valid positions: time series
    visits, bag instances) cut after its last valid position, along dimension 1 of every tensor
    that has it; padding to the cohort's longest series then costs no compute."""
    mask = tensors.get("mask")
    if mask is None or mask.dim() != 2:
        return tensors
    used = torch.nonzero(mask.bool().any(dim=0))
    length = int(used.max()) + 1 if len(used) else 1
    if length == mask.shape[1]:
        return tensors
    padded = mask.shape[1]
    return {k: v[:, :length] if v.dim() >= 2 and v.shape[1] == padded else v for k, v in tensors.items()}


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
    min_cell: int = 1,
) -> dict[str, Any]:
    """One preprocessor per modality, fitted on the training patients holding that modality, each
    statistic over at least ``min_cell`` of them (``common.disclosure``)."""
    return {name: fit_preprocessor(dataset, name, train_ids, options, min_cell) for name in dataset.modalities}


def fit_preprocessor(
    dataset: MultimodalDataset,
    name: str,
    train_ids: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    min_cell: int = 1,
) -> Any:
    """The preprocessor of one modality (see ``fit_preprocessors``)."""
    modality = dataset.modalities[name]
    train = set(train_ids)
    ids = [i for i in modality.patient_ids() if i in train]
    if not ids:
        raise ValueError(f"no training patient holds modality {name!r}")
    return make_preprocessor(modality.kind, **dict((options or {}).get(name, {}))).fit(modality, ids, min_cell)


def make_tensor_set(dataset: MultimodalDataset, preprocessors: Mapping[str, Any], ids: Sequence[str]) -> TensorSet:
    """Transform every modality of the given patients with already-fitted preprocessors."""
    ids = list(ids)
    inputs, present = {}, {}
    for name, preprocessor in preprocessors.items():
        tensors, mask = preprocessor.transform(dataset.modalities[name], ids)
        inputs[name] = tensors
        present[name] = torch.as_tensor(np.asarray(mask, dtype=bool))
    return TensorSet(ids, inputs, present, targets_for(dataset.labels, ids))
