"""One round of local training at a site, as the FedAvg/FedProx rounds of blocks and of the
fused model run it: the validation loss before, the local epochs, the state after."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedlego.common.config import TrainConfig
from fedlego.common.data.tensors import TensorSet
from fedlego.common.protocol import RoundReply
from fedlego.common.tasks import Task
from fedlego.common.training import evaluate_loss, fit


def paired_rows(data: TensorSet) -> TensorSet:
    """The patients holding at least two of the data's modalities."""
    counts = torch.stack(list(data.present.values())).sum(dim=0) if data.present else torch.zeros(len(data))
    return data.subset(torch.nonzero(counts >= 2).squeeze(1).numpy())


def local_round(
    model: nn.Module,
    train: TensorSet,
    validation: TensorSet,
    task: Task,
    train_config: TrainConfig,
    proximal_mu: float,
    forward,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> RoundReply:
    """``train_config.epochs`` local epochs with the FedProx term (``proximal_mu`` > 0) and the
    model's own ``penalty`` (LegoFuse's anchor to the merged weights) added to the loss."""
    if len(train) == 0:
        raise ValueError("this site has no training patient for this model")
    before = evaluate_loss(model, validation, task, forward) if len(validation) else float("nan")
    events = task.events(validation.targets) if len(validation) else 0
    if train_config.epochs > 0:
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

        def regulariser() -> torch.Tensor:
            total = penalty() if penalty is not None else torch.zeros(())
            if proximal_mu > 0:
                total = total + 0.5 * proximal_mu * sum(
                    ((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters() if p.requires_grad
                )
            return total

        fit(model, train, None, task, train_config, forward=forward, regulariser=regulariser)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return RoundReply(state, len(train), before, len(validation), events, task.events(train.targets))
