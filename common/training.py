"""One local training loop for any multimodal model, with validation-based early stopping.

Data travel as a ``TensorSet``: per-modality tensors for a list of patients plus which patients
hold which modality. Batches are drawn within groups of patients sharing the same set of
present modalities, so every model sees a dict in which absent modalities are None.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fedlego.common.config import TrainConfig
from fedlego.common.data.tensors import Batch, TensorSet
from fedlego.common.tasks import Task


@dataclass
class TrainReport:
    """What happened during training: the restored epoch and the loss curves."""

    best_epoch: int
    best_validation_loss: float | None
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    privacy: dict[str, float] | None = None
    """With DP-SGD (``privacy.fit_private``): spent epsilon, delta, noise multiplier, clip..."""
    inner_cv_loss: list[float] | None = None
    """When the epoch budget was chosen by inner cross-validation: the mean inner-validation loss
    after 0, 1, ... epochs (``best_epoch`` is the chosen budget)."""


Forward = Callable[[dict[str, dict[str, torch.Tensor] | None]], torch.Tensor]


class EarlyStopping:
    """Keeps the weights of the epoch with the lowest validation loss and says when ``patience``
    epochs passed without improvement; ``restore`` loads the kept weights back. While the kept
    model is the untrained one (epoch 0), an epoch must beat its loss by ``margin`` (a fraction)."""

    def __init__(self, model: nn.Module, report: TrainReport, patience: int, margin: float = 0.0) -> None:
        self.model, self.report, self.patience, self.margin = model, report, patience, margin
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stale = 0

    def update(self, validation_loss: float, epoch: int) -> bool:
        """Record the loss after ``epoch`` (0 = before training); True when training should stop."""
        best = self.report.best_validation_loss
        if best is not None and self.report.best_epoch == 0:
            best -= self.margin * abs(best)
        if best is None or validation_loss < best:
            self.report.best_validation_loss = validation_loss
            self.report.best_epoch = epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
            self.stale = 0
            return False
        self.stale += 1
        return self.stale >= self.patience

    def end_epoch(self, epoch: int, validation: TensorSet | None, task: Task, forward: Forward, bar) -> bool:
        """After training epoch ``epoch`` (from 1): validation loss recorded and shown; True to stop.
        Without validation patients training runs every epoch."""
        if validation is None or len(validation) == 0:
            return False
        validation_loss = evaluate_loss(self.model, validation, task, forward)
        self.report.validation_loss.append(validation_loss)
        bar.set_postfix(validation_loss=f"{validation_loss:.4f}")
        return self.update(validation_loss, epoch=epoch)

    def restore(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _to_device(batch: Batch, device: torch.device) -> Batch:
    inputs, targets = batch
    if device.type == "cpu":
        return inputs, targets
    moved = {m: None if x is None else {k: v.to(device) for k, v in x.items()} for m, x in inputs.items()}
    return moved, {k: v.to(device) for k, v in targets.items()}


def predict(model: nn.Module, data: TensorSet, forward: Forward | None = None, batch_size: int = 256) -> torch.Tensor:
    """Model outputs (on the CPU) for every row of ``data`` (rows holding no modality give NaN);
    runs on the model's device."""
    forward = forward or model
    device = _model_device(model)
    model.eval()
    outputs: torch.Tensor | None = None
    with torch.no_grad():
        for rows, batch in data.batches(batch_size):
            inputs, _ = _to_device(batch, device)
            logits = forward(inputs).cpu()
            if outputs is None:
                outputs = torch.full((len(data), logits.shape[1]), float("nan"))
            outputs[torch.as_tensor(rows)] = logits.float()
    if outputs is None:
        raise ValueError("no patient in this set holds any modality the model accepts")
    return outputs


def evaluate_loss(model: nn.Module, data: TensorSet, task: Task, forward: Forward | None = None) -> float:
    """Task loss on a whole set (used for early stopping)."""
    logits = predict(model, data, forward)
    keep = ~torch.isnan(logits).any(dim=1)
    return float(task.loss(logits[keep], {k: v[keep] for k, v in data.targets.items()}))


def bar_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for ``progress``: True/False force the bar on or off; None shows it only
    when the output is a terminal (not in logs or CI)."""
    return None if progress is None else not progress


def fit(
    model: nn.Module,
    train: TensorSet,
    validation: TensorSet | None,
    task: Task,
    config: TrainConfig,
    *,
    forward: Forward | None = None,
    description: str = "training",
    progress: bool | None = False,
    regulariser: Callable[[], torch.Tensor] | None = None,
) -> TrainReport:
    """Adam on the trainable parameters; with validation data, keep the epoch of lowest
    validation loss and stop after ``patience`` epochs without improvement. ``regulariser`` adds
    a penalty to every batch loss (e.g. FedProx's proximal term)."""
    forward = forward or model
    device = resolve_device(config.device)
    model.to(device)
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    report = TrainReport(best_epoch=config.epochs, best_validation_loss=None)
    stopping = EarlyStopping(model, report, config.patience, config.min_improvement if config.keep_initial else 0.0)
    if validation is not None and len(validation) and config.keep_initial:
        stopping.update(evaluate_loss(model, validation, task, forward), epoch=0)
    bar = tqdm(range(config.epochs), desc=description, disable=bar_disabled(progress), leave=False)
    for epoch in bar:
        model.train()
        losses = []
        for _, batch in train.batches(config.batch_size, generator):
            inputs, targets = _to_device(batch, device)
            if len(targets[next(iter(targets))]) < 2:
                continue  # a single-row batch gives no usable survival ranking signal
            optimiser.zero_grad()
            loss = task.loss(forward(inputs), targets)
            if regulariser is not None:
                loss = loss + regulariser()
            if not torch.isfinite(loss):
                raise ValueError(
                    f"non-finite training loss in epoch {epoch + 1}: the model produced NaN or inf "
                    "(an encoder output, or a learning rate too high)"
                )
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        report.train_loss.append(float(np.mean(losses)) if losses else float("nan"))
        if stopping.end_epoch(epoch + 1, validation, task, forward, bar):
            break
    stopping.restore()
    model.to("cpu")  # packages and merges work on CPU tensors
    return report
