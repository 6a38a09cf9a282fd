"""DP-SGD block training does what ``common.privacy`` says: per-patient gradients (vmap(grad)) equal
one-patient-at-a-time autograd, each patient's contribution is clipped to ``max_grad_norm``, and
Gaussian noise of std ``noise_multiplier * max_grad_norm`` on the sum of clipped gradients (then
divided by the expected batch size), drawn afresh on every run, reaches the optimiser and the
weights. The checks observe ``fit_private`` itself: a global optimiser pre-step hook records the
gradient AdamW applies and the batch size Poisson sampling drew."""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from fedlego.common.config import ModelConfig, PrivacyConfig, TrainConfig
from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.synthetic import SyntheticModality, make_synthetic
from fedlego.common.data.tensors import TensorSet, fit_preprocessors, make_tensor_set, task_for
from fedlego.common.lego import LegoBlock
from fedlego.common.privacy import _per_sample_gradients, fit_private
from fedlego.common.tasks import Task
from fedlego.common.workflow import build_block

MODEL = ModelConfig(latent_channels=8, latent_dim=32, encoder_width=32, heads=2, head_dim=8, dropout=0.0, direct=False)
"""The method's block: every coordinate has a gradient from the first step (a direct block's latent
head starts at zero, so its latent path has none then; ``test_vmap...`` checks that block too)."""
KINDS = {"omics": "tabular", "labs": "timeseries"}
CLEAN = 1e-12  # a noise multiplier this small leaves the clipped gradient untouched to float precision

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")  # accountant at extreme sigmas


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster, and far faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Data:
    task: Task
    train: dict[str, TensorSet]  # training patients holding each modality


@pytest.fixture(scope="module")
def data() -> Data:
    modalities = [SyntheticModality(name, kind, signal=1.0) for name, kind in KINDS.items()]
    dataset = make_synthetic(n_patients=60, modalities=modalities, task="survival", seed=1)
    split = dataset_splits(dataset, n_folds=1, seed=0)[0]
    fitted = fit_preprocessors(dataset, split.train)
    train = make_tensor_set(dataset, fitted, split.train)
    return Data(task_for(dataset.labels, split.train), {m: train.restrict([m]) for m in KINDS})


def new_block(data: Data, modality: str = "omics", model: ModelConfig = MODEL) -> LegoBlock:
    """A fresh seeded block, built as ``train_block`` builds it."""
    example = {k: v[:2] for k, v in data.train[modality].inputs[modality].items()}
    return build_block(modality, KINDS[modality], example, data.task, model)


def trainable(block: LegoBlock) -> list[torch.nn.Parameter]:
    return [p for p in block.parameters() if p.requires_grad]


def autograd_gradient(block: LegoBlock, task: Task, rows: TensorSet, i: int) -> tuple[torch.Tensor, float]:
    """Patient ``i``'s flat gradient and loss by plain loss.backward() on a batch of one."""
    block.zero_grad(set_to_none=True)
    inputs = {k: v[i : i + 1] for k, v in rows.inputs[block.modality].items()}
    loss = task.loss(block(inputs), {k: v[i : i + 1] for k, v in rows.targets.items()})
    loss.backward()
    flat = torch.cat([p.grad.flatten() for p in trainable(block)])
    block.zero_grad(set_to_none=True)
    return flat, float(loss.detach())


def clipped(gradient: torch.Tensor, clip: float) -> torch.Tensor:
    return gradient * min(1.0, clip / (float(gradient.norm()) + 1e-6))  # Opacus's clip factor


@dataclass
class Step:
    gradient: torch.Tensor  # flat gradient AdamW applies
    batch: int  # patients Poisson-sampled into this step


@contextmanager
def applied_gradients() -> Iterator[list[Step]]:
    """Records every step of the AdamW inside Opacus's DPOptimizer: the gradient it applies and the
    realised batch size (the per-sample gradients handed to Opacus are still attached then)."""
    seen: list[Step] = []

    def record(optimiser, args, kwargs) -> None:
        if type(optimiser) is torch.optim.AdamW:
            params = [p for group in optimiser.param_groups for p in group["params"]]
            gradient = torch.cat([p.grad.detach().flatten().clone() for p in params])
            seen.append(Step(gradient, len(params[0].grad_sample)))

    handle = register_optimizer_step_pre_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def private_run(
    data: Data,
    rows: list[int] | None,
    noise: float,
    clip: float,
    *,
    batch_size: int = 64,
    epochs: int = 1,
    seed: int = 0,
    lr: float = 1e-3,
):
    """``fit_private`` of a fresh omics block on some training patients: (block, report, applied gradients)."""
    train = data.train["omics"] if rows is None else data.train["omics"].subset(rows)
    block = new_block(data)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, learning_rate=lr, weight_decay=0.0, seed=seed, device="cpu"
    )
    with applied_gradients() as seen:
        report = fit_private(
            block, "omics", train, None, data.task, config, PrivacyConfig(noise_multiplier=noise, max_grad_norm=clip)
        )
    return block, report, seen


def flat_weights(block: LegoBlock) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainable(block)])


# -- 1. per-patient gradients ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "modality, frozen, direct",
    [("omics", False, False), ("labs", False, False), ("omics", True, False), ("labs", False, True)],
)
def test_vmap_per_patient_gradients_equal_one_patient_autograd(data: Data, modality: str, frozen: bool, direct: bool):
    """Tabular SNN, the time-series encoder (a buffer, token masks), a frozen encoder, a direct block."""
    block = new_block(data, modality, replace(MODEL, direct=direct))
    if frozen:
        block.freeze_encoder()
    block.train()  # as in fit_private (dropout is 0)
    rows = data.train[modality]
    parameters, per_sample = _per_sample_gradients(block, data.task)
    assert [id(p) for p in parameters] == [id(p) for p in trainable(block)]  # every trainable parameter, in order
    assert frozen == (len(parameters) < len(list(block.parameters())))
    grads, losses = per_sample(rows.inputs[modality], rows.targets)
    assert [g.shape for g in grads] == [(len(rows), *p.shape) for p in parameters]
    vmapped = torch.cat([g.reshape(len(rows), -1) for g in grads], dim=1)
    for i in range(12):  # vmap ran over all of them; autograd one at a time is the slow part
        reference, loss = autograd_gradient(block, data.task, rows, i)
        assert float(reference.norm()) > 0
        torch.testing.assert_close(vmapped[i], reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))
        assert float(losses[i]) == pytest.approx(loss, rel=1e-5)
    assert len({round(float(n), 4) for n in vmapped.norm(dim=1)}) == len(rows)  # one gradient per patient


def test_dropout_is_drawn_per_patient(data: Data):
    """One patient repeated: independent dropout masks give different gradients in train mode, none in eval."""
    block = new_block(data, model=ModelConfig(**{**MODEL.__dict__, "dropout": 0.5}))
    rows = data.train["omics"].subset([0] * 4)
    _, per_sample = _per_sample_gradients(block, data.task)
    torch.manual_seed(0)
    block.train()
    grads, _ = per_sample(rows.inputs["omics"], rows.targets)
    train_mode = torch.cat([g.reshape(4, -1) for g in grads], dim=1)
    assert all(not torch.allclose(train_mode[0], train_mode[j]) for j in range(1, 4))
    block.eval()
    grads, _ = per_sample(rows.inputs["omics"], rows.targets)
    eval_mode = torch.cat([g.reshape(4, -1) for g in grads], dim=1)
    reference, _ = autograd_gradient(block, data.task, rows, 0)
    for j in range(4):
        torch.testing.assert_close(eval_mode[j], reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))


# -- 2. clipping ----------------------------------------------------------------------------------
def test_each_patients_contribution_is_clipped_to_the_norm(data: Data):
    """fit_private on one patient (sample rate 1, expected batch 1): the applied gradient is that
    patient's gradient clipped to max_grad_norm: scaled down to exactly the norm when above it,
    unchanged below it."""
    block = new_block(data)
    block.train()
    patients = list(range(6))
    raw = [autograd_gradient(block, data.task, data.train["omics"], i)[0] for i in patients]
    norms = sorted(float(g.norm()) for g in raw)
    clip = (norms[2] + norms[3]) / 2  # three patients above the bound, three below
    for i, gradient in zip(patients, raw, strict=True):
        _, report, seen = private_run(data, [i], CLEAN, clip)
        assert len(seen) == 1 and seen[0].batch == 1 and report.privacy["sample_rate"] == 1.0
        applied = seen[0].gradient
        assert float(applied.norm()) <= clip * (1 + 1e-5)
        if float(gradient.norm()) > clip:
            assert float(applied.norm()) == pytest.approx(clip, rel=1e-4)
        else:
            torch.testing.assert_close(applied, gradient, rtol=1e-4, atol=1e-6 * clip)
        torch.testing.assert_close(applied, clipped(gradient, clip), rtol=1e-4, atol=1e-6 * clip)


def test_batch_gradient_is_the_sum_of_clipped_gradients_over_the_expected_batch_size(data: Data):
    """Eight patients, sample rate 1: applied = sum_i clip(g_i) / 8, whatever each patient's raw norm."""
    block = new_block(data)
    block.train()
    patients = list(range(8))
    raw = [autograd_gradient(block, data.task, data.train["omics"], i)[0] for i in patients]
    clip = sorted(float(g.norm()) for g in raw)[4]
    _, _, seen = private_run(data, patients, CLEAN, clip, batch_size=8)
    assert len(seen) == 1 and seen[0].batch == 8
    expected = torch.stack([clipped(g, clip) for g in raw]).sum(dim=0) / 8
    torch.testing.assert_close(seen[0].gradient, expected, rtol=1e-4, atol=1e-6 * clip)
    unclipped = torch.stack(raw).sum(dim=0) / 8
    assert float((seen[0].gradient - unclipped).norm()) > 0.1 * float(unclipped.norm())  # clipping changed it


# -- 3. noise -------------------------------------------------------------------------------------
def test_noise_on_the_sum_has_std_noise_multiplier_times_clip(data: Data):
    """All patients every step (sample rate 1): noisy minus clean applied gradient, times the batch
    size, is N(0, (sigma C)^2) per coordinate."""
    clip, sigma = 0.5, 2.0
    n = len(data.train["omics"])
    _, clean_report, (clean,) = private_run(data, None, CLEAN, clip)
    _, report, (noisy,) = private_run(data, None, sigma, clip)
    assert report.privacy["noise_multiplier"] == sigma and report.privacy["clip"] == clip
    assert clean.batch == noisy.batch == n and clean_report.privacy["sample_rate"] == 1.0
    assert float(clean.gradient.norm() * n) <= n * clip * (1 + 1e-5)  # a sum of n clipped gradients
    noise = (noisy.gradient - clean.gradient) * n
    assert noise.numel() > 10_000
    assert float(noise.std()) == pytest.approx(sigma * clip, rel=0.03)
    assert abs(float(noise.mean())) < 6 * sigma * clip / math.sqrt(noise.numel())
    within_one_std = float((noise.abs() < sigma * clip).float().mean())
    assert within_one_std == pytest.approx(0.6827, abs=0.02)  # Gaussian, not e.g. uniform (0.577)


def test_poisson_steps_divide_the_noisy_sum_by_the_expected_batch_size(data: Data):
    """Sample rate 1/3 of 42 patients (expected batch 14): batches vary in size, and every step's
    applied gradient, times 14, has std sigma C (the clipped signal, norm <= batch * C, is negligible)."""
    n = len(data.train["omics"])
    assert n == 42
    clip, sigma = 1.0, 100.0
    _, report, seen = private_run(data, None, sigma, clip, batch_size=14, epochs=4)
    assert report.privacy["steps"] == len(seen) == 12 and report.privacy["sample_rate"] == pytest.approx(1 / 3)
    assert len({step.batch for step in seen}) > 1  # Poisson, not fixed batches
    for step in seen:
        assert float(step.gradient.std() * 14) == pytest.approx(sigma * clip, rel=0.04)


def test_an_empty_poisson_batch_still_takes_a_pure_noise_step(data: Data):
    """Two patients, batch 1 (sample rate 1/2, expected batch 1): a step that drew nobody still
    runs and applies pure N(0, (sigma C)^2) noise; every step is counted by the accountant."""
    clip, sigma = 1.0, 3.0
    _, report, seen = private_run(data, [0, 1], sigma, clip, batch_size=1, epochs=40)
    assert len(seen) == report.privacy["steps"] == 80
    empty = [step for step in seen if step.batch == 0]
    assert empty  # each step is empty with probability 1/4: none in 80 has probability 1e-10
    for step in empty:
        assert float(step.gradient.std()) == pytest.approx(sigma * clip, rel=0.04)
        assert abs(float(step.gradient.mean())) < 6 * sigma * clip / math.sqrt(step.gradient.numel())
    nan_epochs = [e for e, loss in enumerate(report.train_loss) if math.isnan(loss)]
    assert nan_epochs == [e for e in range(40) if seen[2 * e].batch == seen[2 * e + 1].batch == 0]


def test_same_seed_draws_fresh_noise_and_batches(data: Data):
    """The run's seed is public (run config, block request): the noise and the Poisson batches must
    not be a function of it, or anyone could regenerate them and subtract the noise. Two runs with
    the same settings draw independent noise (their difference has std sqrt(2) sigma C on the sum)
    and different batches."""
    clip, sigma = 0.5, 2.0
    n = len(data.train["omics"])
    _, _, (first,) = private_run(data, None, sigma, clip)
    _, _, (second,) = private_run(data, None, sigma, clip)
    difference = (first.gradient - second.gradient) * n
    assert float(difference.std()) == pytest.approx(math.sqrt(2) * sigma * clip, rel=0.03)
    batches = [
        [step.batch for step in private_run(data, None, 100.0, clip, batch_size=14, epochs=4)[2]] for _ in range(2)
    ]
    assert batches[0] != batches[1]  # 12 Binomial(42, 1/3) draws: equal by chance with probability < 1e-9


def test_noise_reaches_the_weights(data: Data):
    """Dropout 0 and sample rate 1 leave the noise as the only randomness: without noise the seed
    changes nothing and the first AdamW step (lr * sign of the gradient) follows the clean gradient;
    with noise two runs' weights differ, and that step agrees in sign with the clean gradient as
    often as Gaussian noise of std sigma C / n predicts, mean Phi(|g| / (sigma C / n)) (a no-op would
    agree everywhere)."""
    clip, lr = 1.0, 1e-3
    n = len(data.train["omics"])
    initial = flat_weights(new_block(data))
    clean_block, _, (clean,) = private_run(data, None, CLEAN, clip, lr=lr)
    other_seed, _, _ = private_run(data, None, CLEAN, clip, lr=lr, seed=1)
    torch.testing.assert_close(flat_weights(other_seed), flat_weights(clean_block))
    g = clean.gradient
    keep = g.abs() > 1e-9  # not coordinates without gradient (the queries: one tabular token, softmax = 1)
    assert float(keep.float().mean()) > 0.5
    assert bool((torch.sign(flat_weights(clean_block) - initial)[keep] == -torch.sign(g[keep])).all())

    sigma = float(g[keep].abs().median()) * n / clip  # median |g| / noise std = 1
    noisy, report, _ = private_run(data, None, sigma, clip, lr=lr)
    noisy_again, _, _ = private_run(data, None, sigma, clip, lr=lr)  # same settings, same seed
    assert report.privacy["noise_multiplier"] == sigma
    step, other = flat_weights(noisy) - initial, flat_weights(noisy_again) - initial
    assert float((step - other).abs().gt(lr / 2).float().mean()) > 0.2  # the runs' noise differs
    agree = float((torch.sign(step[keep]) == -torch.sign(g[keep])).float().mean())
    predicted = float(torch.special.ndtr(g[keep].abs() / (sigma * clip / n)).mean())
    assert 0.7 < predicted < 0.9
    assert agree == pytest.approx(predicted, abs=0.02)
