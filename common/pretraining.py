"""Self-supervised pre-training of a tabular encoder on unlabelled data (labels are not used).

A denoising autoencoder: each training patient's preprocessed features are corrupted (a share of
them set to zero, Gaussian noise on the rest), the reference SNN encoder embeds them and a linear
decoder reconstructs the clean features; early stopping on the reconstruction error of the
validation patients. The encoder's weights are then used frozen by LegoBlocks (``site.json``
``"encoder": {"name": "snn", "kwargs": ..., "weights": ..., "frozen": true}``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from fedlego.common.encoders import SNN


@dataclass
class PretrainConfig:
    """Denoising autoencoder settings."""

    width: int = 64
    dropout: float = 0.1
    epochs: int = 200
    patience: int = 20
    learning_rate: float = 1e-3
    batch_size: int = 64
    mask_rate: float = 0.25
    noise: float = 0.1
    seed: int = 0


@dataclass
class PretrainReport:
    """Reconstruction error per epoch and the kept epoch."""

    best_epoch: int
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)


def _corrupt(x: torch.Tensor, config: PretrainConfig, generator: torch.Generator) -> torch.Tensor:
    keep = torch.rand(x.shape, generator=generator) >= config.mask_rate
    return x * keep + config.noise * torch.randn(x.shape, generator=generator) * keep


def pretrain_tabular_encoder(
    train: torch.Tensor, validation: torch.Tensor, config: PretrainConfig
) -> tuple[SNN, PretrainReport]:
    """An SNN encoder pre-trained to denoise ``train`` (patients x features), early-stopped on
    the reconstruction error of ``validation``; returns it in eval mode with the report."""
    if train.ndim != 2 or len(train) < 2:
        raise ValueError(f"pre-training needs a (patients, features) table of 2 rows or more, not {tuple(train.shape)}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    encoder = SNN(train.shape[1], width=config.width, dropout=config.dropout)
    decoder = nn.Linear(config.width, train.shape[1])
    model = nn.Sequential(encoder, decoder)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    report = PretrainReport(best_epoch=0)
    best, best_loss, waited = copy.deepcopy(encoder.state_dict()), float("inf"), 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for start in range(0, len(train), config.batch_size):
            batch = train[order[start : start + config.batch_size]]
            optimiser.zero_grad()
            loss = nn.functional.mse_loss(model(_corrupt(batch, config, generator)), batch)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        report.train_loss.append(sum(losses) / len(losses))
        model.eval()
        with torch.no_grad():
            held_out = validation if len(validation) else train
            loss_now = float(nn.functional.mse_loss(model(held_out), held_out))
        report.validation_loss.append(loss_now)
        if loss_now < best_loss:
            best, best_loss, waited, report.best_epoch = copy.deepcopy(encoder.state_dict()), loss_now, 0, epoch
        else:
            waited += 1
            if waited >= config.patience:
                break
    encoder.load_state_dict(best)
    return encoder.eval(), report
