"""Optional differential privacy: DP-SGD for block training and central DP for fuse rounds.

**Block training (local DP-SGD, Abadi et al. 2016)** with Opacus: Poisson sampling of training
patients (``DPDataLoader``), per-patient gradients clipped to ``max_grad_norm``, Gaussian noise
of standard deviation ``noise_multiplier * max_grad_norm`` on their sum (``DPOptimizer``; AdamW
on the noisy gradient is post-processing) and an RDP accountant. The noise multiplier is
calibrated so that the maximum number of epochs spends ``target_epsilon`` at ``delta``;
early stopping can only stop sooner, and the reported epsilon is what the steps actually run
spent. Opacus's own per-sample gradient modes do not fit a ``LegoBlock`` (a bare
``nn.Parameter`` latent on the root module, dict inputs, buffers in some encoders), so the
per-patient gradients are computed here with ``torch.func`` (``vmap(grad(...))`` over the whole
block, each patient's dropout drawn independently) and handed to Opacus through its ``no_op``
grad-sample mode. The per-patient loss is well defined because the survival likelihood
(logistic hazard) and cross-entropy decompose over patients. The Poisson sampling, dropout and
noise draw from torch's generator seeded from the OS's randomness on every run, not from the
run's seed, which travels in the run configuration: with it anyone could regenerate the batches
and the noise (so DP runs are not reproducible). Opacus's secure mode (a cryptographically secure
generator, against attacks on the floating-point noise) is off.

What is protected: the training patients of the block, at the record level, with respect to the
released block weights. Not protected: the validation patients (early stopping and the restored
epoch read their loss, and the block's ``validation_score`` is computed on them; selection among
the private iterates is post-processing only because validation patients are not training
patients), the fitted preprocessing (feature means and scales computed on training patients
without noise) and survival time bins, and test metrics.

**Fuse rounds (central DP, DP-FedAvg with fixed clipping, McMahan et al. 2018)**: the
coordinator clips each site's update of the fusion parameters to L2 norm ``clip``, adds
Gaussian noise N(0, (noise_multiplier * clip)^2) to their sum and divides by the number of sites
(unweighted). This protects each *site's* contribution (site-level DP) in the released fused
model against anyone but the coordinator, which sees the raw updates. The accountant
(Opacus ``RDPAccountant``) takes one step per aggregation with sample rate = answering sites /
asked sites; sites here are asked deterministically, so the amplification by subsampling that a
rate below one implies is only exact under Poisson sampling of sites. The per-round validation
losses sites report (used to pick the best round) are not privatised.
"""

from __future__ import annotations

import functools
import math
import secrets
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from fedlego.common.config import PrivacyConfig, TrainConfig
from fedlego.common.data.tensors import TensorSet
from fedlego.common.tasks import Task
from fedlego.common.training import EarlyStopping, TrainReport, bar_disabled, resolve_device

if TYPE_CHECKING:  # Opacus costs about a second to import: only runs with DP load it
    from opacus.accountants import RDPAccountant


def default_delta(n: int) -> float:
    """The smaller of 1e-5 and 1/n rounded down to a power of ten (delta must stay well below
    1/n: a delta near 1/n allows releasing one patient's record outright)."""
    if n < 1:
        return 1e-5
    return min(1e-5, 10.0 ** math.floor(math.log10(1.0 / n)))


@functools.lru_cache(maxsize=256)
def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, epochs: int) -> float:
    """The noise multiplier with which ``epochs`` epochs of Poisson-sampled DP-SGD at
    ``sample_rate`` spend at most ``target_epsilon`` at ``delta`` (RDP accountant)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            epochs=epochs,
            accountant="rdp",
        )
    )


def _per_sample_gradients(model: nn.Module, task: Task):
    """vmap(grad) of one patient's loss over a batch: (gradients, losses) per trainable parameter."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))

    def one_loss(params, x, y):
        inputs = {k: v.unsqueeze(0) for k, v in x.items()}
        targets = {k: v.unsqueeze(0) for k, v in y.items()}
        return task.loss(functional_call(model, {**params, **fixed}, (inputs,)), targets)

    compute = vmap(grad_and_value(one_loss), in_dims=(None, 0, 0), randomness="different")

    def run(inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        params = {n: p.detach() for n, p in trainable.items()}
        with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernels have no vmap batching rule
            grads, losses = compute(params, inputs, targets)
        return [grads[n] for n in trainable], losses

    return list(trainable.values()), run


def fit_private(
    model: nn.Module,
    modality: str,
    train: TensorSet,
    validation: TensorSet | None,
    task: Task,
    config: TrainConfig,
    privacy: PrivacyConfig,
    *,
    forward=None,
    description: str = "DP training",
    progress: bool | None = False,
) -> TrainReport:
    """DP-SGD (DP-AdamW) on one modality's block (``train`` restricted to patients holding it),
    with validation-based early stopping like ``training.fit``. The model is trained in place
    and comes back as the same plain module (Opacus's wrapper removed), on the CPU; the report's
    ``privacy`` holds the spent epsilon, delta, noise multiplier and clipping norm."""
    privacy.validate()
    n = len(train)
    if n == 0:
        raise ValueError("no training patient for DP training")
    device = resolve_device(config.device)
    model.to(device)
    # Poisson sampling, dropout and noise draw from torch's generator: seeded from the OS, never from
    # the run's public seed, with which anyone could regenerate the batches and the noise
    torch.manual_seed(secrets.randbits(63))
    delta = privacy.delta or default_delta(n)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    rows = TensorDataset(torch.arange(n))
    loader = DataLoader(rows, batch_size=min(config.batch_size, n), shuffle=False)
    if privacy.noise_multiplier > 0:
        noise = privacy.noise_multiplier
    else:  # Opacus's own calibration, as in make_private_with_epsilon (cached: it is slow)
        noise = calibrate_noise(privacy.target_epsilon, delta, 1 / len(loader), config.epochs)
    from opacus import PrivacyEngine

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")  # see module docstring
        engine = PrivacyEngine(accountant="rdp")
    wrapped, optimiser, loader = engine.make_private(
        module=model,
        optimizer=optimiser,
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=privacy.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="no_op",
    )
    inputs_all = {k: v.to(device) for k, v in train.inputs[modality].items()}
    targets_all = {k: v.to(device) for k, v in train.targets.items()}
    trainable, per_sample = _per_sample_gradients(model, task)
    forward = forward or (lambda inputs: model(inputs[modality]))

    report = TrainReport(best_epoch=config.epochs, best_validation_loss=None)
    stopping = EarlyStopping(model, report, config.patience)
    try:
        bar = tqdm(range(config.epochs), desc=description, disable=bar_disabled(progress), leave=False)
        for epoch in bar:
            model.train()
            losses = []
            for (index,) in loader:
                index = index.to(device)
                if len(index):
                    grads, batch_losses = per_sample(
                        {k: v[index] for k, v in inputs_all.items()}, {k: v[index] for k, v in targets_all.items()}
                    )
                    losses += batch_losses.tolist()
                else:  # an empty Poisson batch still takes a (pure noise) step
                    grads = [torch.zeros((0, *p.shape), device=device) for p in trainable]
                for p, g in zip(trainable, grads, strict=True):
                    p.grad_sample = g.detach()
                optimiser.step()
                optimiser.zero_grad(set_to_none=True)
            report.train_loss.append(float(np.mean(losses)) if losses else float("nan"))
            if stopping.end_epoch(epoch + 1, validation, task, forward, bar):
                break
    finally:
        wrapped.cleanup()  # removes grad_sample & co. from the parameters: a plain module again
    stopping.restore()
    model.to("cpu")
    steps = sum(step for _, _, step in engine.accountant.history)
    report.privacy = {
        "epsilon": float(engine.get_epsilon(delta)),
        "delta": float(delta),
        "noise_multiplier": float(optimiser.noise_multiplier),
        "clip": float(privacy.max_grad_norm),
        "sample_rate": float(1 / len(loader)),
        "steps": float(steps),
        "epochs_run": float(len(report.train_loss)),
    }
    return report


def privacy_metrics(report: TrainReport) -> dict[str, float]:
    """Package-manifest metrics of a DP-trained block (empty without DP)."""
    if not report.privacy:
        return {}
    p = report.privacy
    return {
        "dp_epsilon": p["epsilon"],
        "dp_delta": p["delta"],
        "dp_noise_multiplier": p["noise_multiplier"],
        "dp_clip": p["clip"],
    }


# -- central DP for federated aggregation -------------------------------------------------------


def _rdp_accountant() -> RDPAccountant:
    from opacus.accountants import RDPAccountant

    return RDPAccountant()


@dataclass
class CentralAccountant:
    """RDP accounting of DP-FedAvg rounds: one step per aggregation at the given sample rate."""

    noise_multiplier: float
    clip: float
    delta: float = 1e-5
    accountant: RDPAccountant = field(default_factory=_rdp_accountant)
    rounds: int = 0

    def step(self, sample_rate: float = 1.0) -> None:
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=min(max(sample_rate, 0.0), 1.0))
        self.rounds += 1

    def epsilon(self, delta: float | None = None) -> float:
        if self.rounds == 0:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.delta if delta is None else delta))

    def summary(self) -> dict[str, float]:
        return {
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            "rounds": self.rounds,
        }


def central_epsilon(noise_multiplier: float, rounds: int, delta: float = 1e-5, sample_rate: float = 1.0) -> float:
    """Epsilon after ``rounds`` DP-FedAvg aggregations (convenience for planning runs)."""
    accountant = CentralAccountant(noise_multiplier, 1.0, delta)
    for _ in range(rounds):
        accountant.step(sample_rate)
    return accountant.epsilon()
