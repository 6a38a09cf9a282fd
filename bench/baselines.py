"""Comparison models of the benchmark: classic and neural multimodal fusion on pooled paired data.

Every baseline is fitted on the training ``TensorSet`` (the pooled paired training patients,
possibly missing some modalities), selects its penalty / epoch / round on the validation
``TensorSet`` only, and never sees test patients (``fit_baseline`` takes no test set). A fitted
baseline's ``scores`` follow ``task.scores``: survival risk (higher = riskier) or class
probabilities; they are computed row by row (a patient's score does not depend on who else is
scored), absent modalities are never read (``data.present``), and rows holding none of the
baseline's modalities get NaN, as in ``common.training.predict``.

Names (``BASELINES``):

- ``cox-early``: one penalised linear model on the concatenated flat features of all modalities.
- ``cox-late``: one penalised linear model per modality, combined by the mean of rank risks.
- ``early-fusion``: SNN on the flat features plus presence indicators.
- ``late-fusion``: each modality's reference encoder with its own linear head; mean of logits.

Per modality, ``fit_plain_unimodal`` trains the LegoBlock's comparator (the same encoder with a
linear head, trained like the block on all its training patients); ``MeanOfModels`` late-fuses
those separately trained models, the comparison for LegoMerge (neither needs paired data).
- ``attention-fusion``: HEALNet-style latent array cross-attending to each modality in turn.
- ``fedavg-early-fusion``: ``early-fusion`` trained with FedAvg over simulated sites.

Flat features (the linear models, ``early-fusion`` and ``fedavg-early-fusion``): per modality a
fixed summary (tabular: the vector; bags: masked mean of the instances; time series: per
variable the mean and the last observed value, plus log(1 + visits); images: per channel mean,
standard deviation and maximum plus a 4x4 average-pooled grid), standardised on the training
rows holding the modality, compressed by PCA to ``pca_components`` when wider than twice that
(omics), standardised again; an absent modality is set to 0 (the training mean).
"""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.util import Surv
from torch import nn

from fedlego.common.aggregation import average_states
from fedlego.common.config import TrainConfig
from fedlego.common.data.kinds import modality_kind as registered_kind
from fedlego.common.data.tensors import TensorSet
from fedlego.common.encoders import SNN, IrregularTimeSeriesEncoder, SmallCNN, reference_encoder
from fedlego.common.layers import LatentUpdate, TaskHead
from fedlego.common.lego import pool_tokens
from fedlego.common.tasks import SurvivalTask, Targets, Task
from fedlego.common.training import evaluate_loss, fit, predict

COX_ALPHAS: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)
"""Ridge penalties tried for Cox models (scikit-survival: 0.5 * alpha * ||beta||^2), weakest first."""
LOGISTIC_CS: tuple[float, ...] = (10.0, 1.0, 0.1, 0.01, 0.001)
"""Inverse L2 penalties tried for logistic regression, weakest penalty first."""
DEFAULT_PENALTY_INDEX = 2
"""Grid index used when the validation metric is undefined (no validation events / one class)."""
ATTENTION_LATENTS = 16
ATTENTION_HEADS = 4
ATTENTION_HEAD_DIM = 16
TABULAR_TOKENS = 8
FEATURES = "features"
"""Pseudo-modality holding the flat features in the TensorSets of the early-fusion networks."""


@dataclass
class BaselineConfig:
    """Settings shared by all baselines. ``seed`` seeds initialisation, training and the FedAvg
    site split (it replaces ``training.seed``)."""

    modalities: list[str]
    seed: int = 0
    training: TrainConfig = field(default_factory=TrainConfig)
    """Epochs, learning rate, batch size and patience of the neural baselines."""
    width: int = 64
    dropout: float = 0.1
    pca_components: int = 10
    """Flat features of a modality wider than twice this are compressed by PCA to this many."""
    fedavg_sites: int = 3
    fedavg_rounds: int = 25
    fedavg_local_epochs: int = 2


# ---------------------------------------------------------------------------------------------
# Data helpers
# ---------------------------------------------------------------------------------------------


def kind_of_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """The modality kind a preprocessor's tensors come from, read from their keys and shapes."""
    keys = set(tensors)
    if keys == {"values", "observed", "times", "mask"}:
        return "timeseries"
    if keys == {"x", "mask"}:
        return "bags"
    if keys == {"x"}:
        return "image" if tensors["x"].dim() == 4 else "tabular"
    raise ValueError(f"unrecognised modality tensors {sorted(keys)}")


def _select(data: TensorSet, modalities: list[str]) -> TensorSet:
    """Only some modalities, keeping every row (rows holding none of them are scored NaN)."""
    return TensorSet(
        data.ids, {m: data.inputs[m] for m in modalities}, {m: data.present[m] for m in modalities}, data.targets
    )


def _any_present(data: TensorSet, modalities: list[str]) -> np.ndarray:
    """Rows holding at least one of ``modalities``."""
    return np.stack([data.present[m].numpy() for m in modalities], axis=1).any(axis=1)


def _rows_targets(data: TensorSet, rows: np.ndarray) -> Targets:
    index = torch.as_tensor(np.flatnonzero(rows))
    return {k: v[index] for k, v in data.targets.items()}


def summary_features(kind: str, tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """A fixed-length summary (n, f) of each row's tensors, as the kind defines it."""
    return registered_kind(kind).summary_features(tensors).double().numpy()


@dataclass
class _ModalityFeatures:
    kind: str
    scaler: StandardScaler
    pca: PCA | None
    output_scaler: StandardScaler | None


class FlatFeatures:
    """Per modality: summary -> standardise -> PCA when wide -> standardise, fitted on the training
    rows holding the modality; absent rows are 0 (the training mean)."""

    def __init__(self, modalities: list[str], pca_components: int) -> None:
        self.modalities = list(modalities)
        self.pca_components = pca_components
        self.fitted: dict[str, _ModalityFeatures] = {}

    def fit(self, data: TensorSet) -> FlatFeatures:
        for m in self.modalities:
            rows = data.present[m].numpy()
            if not rows.any():
                raise ValueError(f"no training patient holds modality {m!r}")
            kind = kind_of_tensors(data.inputs[m])
            x = summary_features(kind, data.inputs[m])[rows]
            scaler = StandardScaler().fit(x)
            x = scaler.transform(x)
            pca = output_scaler = None
            n_components = min(self.pca_components, len(x) - 1)
            if x.shape[1] > 2 * self.pca_components and n_components >= 1:
                pca = PCA(n_components, svd_solver="full").fit(x)
                output_scaler = StandardScaler().fit(pca.transform(x))
            self.fitted[m] = _ModalityFeatures(kind, scaler, pca, output_scaler)
        return self

    def modality(self, data: TensorSet, m: str) -> np.ndarray:
        """Features (n, f_m) of one modality; rows lacking it are zeros."""
        fitted = self.fitted[m]
        rows = np.flatnonzero(data.present[m].numpy())
        width = fitted.pca.n_components_ if fitted.pca is not None else fitted.scaler.n_features_in_
        out = np.zeros((len(data), width))
        if rows.size:
            x = fitted.scaler.transform(summary_features(fitted.kind, data.subset(rows).inputs[m]))
            if fitted.pca is not None and fitted.output_scaler is not None:
                x = fitted.output_scaler.transform(fitted.pca.transform(x))
            out[rows] = x
        return out

    def transform(self, data: TensorSet, indicators: bool = False) -> np.ndarray:
        """All modalities concatenated (n, sum f_m), then one presence flag per modality if asked."""
        blocks = [self.modality(data, m) for m in self.modalities]
        if indicators:
            blocks.append(np.stack([data.present[m].numpy() for m in self.modalities], axis=1).astype(float))
        return np.concatenate(blocks, axis=1)

    def tensor_set(self, data: TensorSet) -> TensorSet:
        """The flat features with presence flags as a one-modality TensorSet (for the networks)."""
        x = torch.as_tensor(self.transform(data, indicators=True), dtype=torch.float32)
        present = torch.as_tensor(_any_present(data, self.modalities))
        return TensorSet(data.ids, {FEATURES: {"x": x}}, {FEATURES: present}, data.targets)


# ---------------------------------------------------------------------------------------------
# Fitted baselines
# ---------------------------------------------------------------------------------------------


@dataclass
class FittedBaseline(ABC):
    """A fitted comparison model. ``selection``: what validation chose (penalties, epoch, round)."""

    name: str
    task: Task
    parameter_count: int
    selection: dict[str, Any]

    @abstractmethod
    def scores(self, data: TensorSet) -> np.ndarray:
        """Risk (survival, higher = riskier) or probabilities per row; NaN for rows holding none
        of the baseline's modalities."""


@dataclass
class _LinearModel:
    """A penalised Cox or logistic model with its selected penalty."""

    model: CoxPHSurvivalAnalysis | LogisticRegression
    task: Task
    penalty: float
    validation_metric: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        if isinstance(self.task, SurvivalTask):
            return self.model.predict(x)
        n_classes = self.task.n_classes
        probabilities = np.zeros((len(x), n_classes))
        probabilities[:, self.model.classes_] = self.model.predict_proba(x)
        return probabilities[:, 1] if n_classes == 2 else probabilities

    @property
    def n_coefficients(self) -> int:
        return int(self.model.coef_.size + getattr(self.model, "intercept_", np.zeros(0)).size)


def _fit_linear(
    x: np.ndarray, targets: Targets, x_validation: np.ndarray, validation_targets: Targets, task: Task
) -> _LinearModel:
    """Ridge Cox (survival) or L2 logistic regression, penalty chosen on the validation metric
    (ties go to the stronger penalty; grid middle when the metric is undefined)."""
    survival = isinstance(task, SurvivalTask)
    grid = COX_ALPHAS if survival else LOGISTIC_CS
    if survival:
        y = Surv.from_arrays(targets["event"].numpy().astype(bool), targets["time"].numpy().astype(float))
    fitted: list[_LinearModel] = []
    for penalty in grid:
        with warnings.catch_warnings():  # weakly penalised fits on tiny cohorts may not converge
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            if survival:
                model: CoxPHSurvivalAnalysis | LogisticRegression = CoxPHSurvivalAnalysis(alpha=penalty, ties="efron")
                try:
                    model.fit(x, y)
                except (ValueError, np.linalg.LinAlgError):
                    continue  # a divergent weakly penalised fit; the stronger penalties remain
            else:
                model = LogisticRegression(C=penalty, max_iter=5000).fit(x, targets["label"].numpy())
        candidate = _LinearModel(model, task, penalty, float("nan"))
        if len(x_validation):
            candidate.validation_metric = task.metric(candidate.predict(x_validation), validation_targets)
        fitted.append(candidate)
    if not fitted:
        raise ValueError("no penalised Cox model could be fitted on the training patients")
    metrics = np.array([c.validation_metric for c in fitted])
    if np.isnan(metrics).all():  # the fit closest to the grid's middle (some fits may have failed)
        middle = grid[DEFAULT_PENALTY_INDEX]
        return min(fitted, key=lambda c: abs(grid.index(c.penalty) - grid.index(middle)))
    return fitted[np.flatnonzero(metrics == np.nanmax(metrics))[-1]]  # grids run weakest to strongest


@dataclass
class LinearEarlyFusion(FittedBaseline):
    """``cox-early``: one linear model on the concatenated flat features."""

    features: FlatFeatures
    model: _LinearModel

    def scores(self, data: TensorSet) -> np.ndarray:
        out = self.model.predict(self.features.transform(data))
        return _nan_absent(out, _any_present(data, self.features.modalities))


@dataclass
class LinearLateFusion(FittedBaseline):
    """``cox-late``: per-modality linear models; survival: mean over present modalities of the
    percentile of each risk within that modality's training risks; classification: mean of
    probabilities over present modalities."""

    features: FlatFeatures
    models: dict[str, _LinearModel]
    training_risks: dict[str, np.ndarray]
    """Sorted training risks per modality (survival only)."""

    def scores(self, data: TensorSet) -> np.ndarray:
        total: np.ndarray | None = None
        count = np.zeros(len(data))
        for m, model in self.models.items():
            rows = data.present[m].numpy()
            out = model.predict(self.features.modality(data, m))
            if isinstance(self.task, SurvivalTask):
                reference = self.training_risks[m]
                below = np.searchsorted(reference, out, side="left")
                at_or_below = np.searchsorted(reference, out, side="right")
                out = (below + at_or_below) / (2.0 * len(reference))
            out = out * _broadcast(rows, out)
            total = out if total is None else total + out
            count += rows
        assert total is not None
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / _broadcast(count, total)


def _broadcast(column: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A per-row vector shaped to multiply ``like`` ((n,) or (n, K))."""
    return column.reshape(-1, *([1] * (like.ndim - 1)))


def _nan_absent(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    scores = np.array(scores, dtype=float)
    scores[~rows] = np.nan
    return scores


@dataclass
class NeuralBaseline(FittedBaseline):
    """A trained network scored through ``common.training.predict`` on prepared inputs."""

    model: nn.Module
    prepare: Callable[[TensorSet], TensorSet]

    def scores(self, data: TensorSet) -> np.ndarray:
        return self.task.scores(predict(self.model, self.prepare(data)))


@dataclass
class FedAvgBaseline(NeuralBaseline):
    """``fedavg-early-fusion``: adds the communication cost of training."""

    bytes_per_site: int = 0
    """Bytes each site received plus sent over all rounds (float32 full state dicts)."""


# ---------------------------------------------------------------------------------------------
# Linear baselines
# ---------------------------------------------------------------------------------------------


def fit_cox_early(train: TensorSet, validation: TensorSet, task: Task, config: BaselineConfig) -> FittedBaseline:
    """Linear early fusion: ridge Cox (``sksurv`` ``CoxPHSurvivalAnalysis``, Efron ties) or L2
    logistic regression on the concatenated flat features (omics as PCA components), missing
    modalities at the training mean; penalty chosen on the validation c-index / AUC from a small
    grid. Reference: the Cox early-fusion baseline of the MM-Lego notes (omics as PCA-10).
    Limits: linear in the summaries; bags, series and images only through fixed summaries."""
    features = FlatFeatures(config.modalities, config.pca_components).fit(train)
    rows, validation_rows = _any_present(train, config.modalities), _any_present(validation, config.modalities)
    model = _fit_linear(
        features.transform(train)[rows],
        _rows_targets(train, rows),
        features.transform(validation)[validation_rows],
        _rows_targets(validation, validation_rows),
        task,
    )
    selection = {"penalty": model.penalty, "validation_metric": model.validation_metric}
    return LinearEarlyFusion("cox-early", task, model.n_coefficients, selection, features, model)


def fit_cox_late(train: TensorSet, validation: TensorSet, task: Task, config: BaselineConfig) -> FittedBaseline:
    """Linear late fusion: one ridge Cox / logistic model per modality on its own flat features
    (training rows holding it; penalty chosen per modality on the validation rows holding it),
    combined by the mean over the patient's present modalities of rank risks (percentile within
    that modality's training risks, so a score does not depend on the other scored patients) or
    of probabilities. Reference: the Cox late-fusion baseline of the MM-Lego notes.
    Limits: equal modality weights; ranks discard how extreme a risk is beyond the training range."""
    features = FlatFeatures(config.modalities, config.pca_components).fit(train)
    models, risks, selection = {}, {}, {}
    for m in config.modalities:
        rows, validation_rows = train.present[m].numpy(), validation.present[m].numpy()
        x = features.modality(train, m)[rows]
        models[m] = _fit_linear(
            x,
            _rows_targets(train, rows),
            features.modality(validation, m)[validation_rows],
            _rows_targets(validation, validation_rows),
            task,
        )
        risks[m] = np.sort(models[m].predict(x)) if isinstance(task, SurvivalTask) else np.zeros(0)
        selection[m] = {"penalty": models[m].penalty, "validation_metric": models[m].validation_metric}
    count = sum(model.n_coefficients for model in models.values())
    return LinearLateFusion("cox-late", task, count, selection, features, models, risks)


# ---------------------------------------------------------------------------------------------
# Neural baselines
# ---------------------------------------------------------------------------------------------


def _training(config: BaselineConfig, **changes: Any) -> TrainConfig:
    return replace(config.training, seed=config.seed, **changes)


def _parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _or_none(data: TensorSet) -> TensorSet | None:
    return data if len(data) else None


class FlatNet(nn.Module):
    """SNN on the flat feature vector, then a linear task head."""

    def __init__(self, in_features: int, n_outputs: int, width: int, dropout: float) -> None:
        super().__init__()
        self.encoder = SNN(in_features, width=width, dropout=dropout)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, inputs: dict[str, dict[str, torch.Tensor] | None]) -> torch.Tensor:
        features = inputs[FEATURES]
        assert features is not None
        return self.head(self.encoder(features["x"]))


def _early_fusion_parts(
    train: TensorSet, validation: TensorSet, task: Task, config: BaselineConfig
) -> tuple[FlatNet, FlatFeatures, TensorSet, TensorSet]:
    features = FlatFeatures(config.modalities, config.pca_components).fit(train)
    train_f, validation_f = features.tensor_set(train), features.tensor_set(validation).restrict([FEATURES])
    torch.manual_seed(config.seed)
    model = FlatNet(train_f.inputs[FEATURES]["x"].shape[1], task.n_outputs, config.width, config.dropout)
    return model, features, train_f, validation_f


def fit_early_fusion(train: TensorSet, validation: TensorSet, task: Task, config: BaselineConfig) -> FittedBaseline:
    """Neural early fusion: the flat features of ``cox-early`` plus one presence flag per
    modality -> SNN (Klambauer et al., 2017) -> linear head, trained on the task loss with early
    stopping on the validation loss (``common.training.fit``).
    Limits: fixed summaries of bags, series and images; omics only through PCA components."""
    model, features, train_f, validation_f = _early_fusion_parts(train, validation, task, config)
    report = fit(model, train_f, _or_none(validation_f), task, _training(config), description="early-fusion")
    model.eval()
    selection = {"best_epoch": report.best_epoch, "validation_loss": report.best_validation_loss}
    return NeuralBaseline("early-fusion", task, _parameter_count(model), selection, model, features.tensor_set)


def _as_tokens(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An encoder output as tokens (b, n, w) and an optional boolean mask (b, n)."""
    mask = None
    if isinstance(out, tuple):
        out, mask = out
    if out.dim() == 2:
        return out.unsqueeze(1), None
    return out, None if mask is None else mask.bool()


def _token_width(encoder: nn.Module, example: dict[str, torch.Tensor]) -> int:
    """The width of an encoder's tokens, found by running it on an example batch."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        tokens, _ = _as_tokens(encoder(**example))
    encoder.train(was_training)
    return int(tokens.shape[-1])


class LateFusionNet(nn.Module):
    """Reference encoder + linear head per modality; output = mean of the present modalities'
    logits. Token outputs are pooled by a (masked) mean before the head."""

    def __init__(
        self, examples: dict[str, dict[str, torch.Tensor]], n_outputs: int, width: int, dropout: float
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(
            {m: reference_encoder(kind_of_tensors(x), x, width, dropout) for m, x in examples.items()}
        )
        self.heads = nn.ModuleDict(
            {m: nn.Linear(_token_width(self.encoders[m], x), n_outputs) for m, x in examples.items()}
        )

    def forward(self, inputs: dict[str, dict[str, torch.Tensor] | None]) -> torch.Tensor:
        logits = []
        for m, encoder in self.encoders.items():
            tensors = inputs.get(m)
            if tensors is None:
                continue
            tokens, mask = _as_tokens(encoder(**tensors))
            pooled = pool_tokens(tokens, mask)
            logits.append(self.heads[m](pooled))
        return torch.stack(logits).mean(dim=0)


def _examples(data: TensorSet, modalities: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Two rows holding each modality (to size encoders)."""
    examples = {}
    for m in modalities:
        rows = torch.nonzero(data.present[m]).squeeze(1)[:2]
        if len(rows) == 0:
            raise ValueError(f"no training patient holds modality {m!r}")
        examples[m] = {k: v[rows] for k, v in data.inputs[m].items()}
    return examples


def _fit_network(
    name: str, model: nn.Module, train: TensorSet, validation: TensorSet, task: Task, config: BaselineConfig
) -> FittedBaseline:
    """Train a network on the raw modality tensors (early stopping on validation loss)."""
    modalities = list(config.modalities)
    train_m, validation_m = _select(train, modalities), _select(validation, modalities)
    report = fit(model, train_m, _or_none(validation_m.restrict(modalities)), task, _training(config), description=name)
    model.eval()
    selection = {"best_epoch": report.best_epoch, "validation_loss": report.best_validation_loss}
    return NeuralBaseline(name, task, _parameter_count(model), selection, model, lambda data: _select(data, modalities))


def fit_late_fusion(train: TensorSet, validation: TensorSet, task: Task, config: BaselineConfig) -> FittedBaseline:
    """Neural late fusion ("SNN + ABMIL (Late)" of the MM-Lego poster): each modality's reference
    encoder (SNN, gated-attention MIL, irregular time-series encoder, small CNN) with its own
    linear head, trained jointly end to end on the task loss; output = mean of the present
    modalities' logits; early stopping on the validation loss.
    Limits: no cross-modal interaction before the logits."""
    torch.manual_seed(config.seed)
    model = LateFusionNet(_examples(train, config.modalities), task.n_outputs, config.width, config.dropout)
    return _fit_network("late-fusion", model, train, validation, task, config)


class MeanOfModels(nn.Module):
    """Late fusion of separately trained models: the mean of the logits of the models whose
    modality is present (no joint training, no paired data)."""

    def __init__(self, models: dict[str, nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleDict(models)

    def forward(self, inputs: dict[str, dict[str, torch.Tensor] | None]) -> torch.Tensor:
        return torch.stack([model(inputs) for m, model in self.models.items() if inputs.get(m) is not None]).mean(0)


def fit_plain_unimodal(
    modality: str, train: TensorSet, validation: TensorSet, task: Task, config: BaselineConfig
) -> nn.Module:
    """The LegoBlock's comparator: the modality's reference encoder with a linear head on its pooled
    tokens, trained like the block (every training patient holding the modality, the task loss, the
    blocks' training settings and step budget, early stopping on the validation patients)."""
    train_m, validation_m = train.restrict([modality]), validation.restrict([modality])
    torch.manual_seed(config.seed)
    model = LateFusionNet(_examples(train_m, [modality]), task.n_outputs, config.width, config.dropout)
    fit(model, train_m, _or_none(validation_m), task, _training(config).within_step_budget(len(train_m)))
    return model.eval()


class FeatureGroupTokens(nn.Module):
    """Tabular x (b, f) -> tokens (b, g, w): the features split into ``g`` contiguous groups (zero
    padded), each group with its own linear map (its bias acts as the group's embedding)."""

    def __init__(self, in_features: int, width: int, groups: int = TABULAR_TOKENS) -> None:
        super().__init__()
        self.groups = min(groups, in_features)
        self.group_size = -(-in_features // self.groups)
        self.padding = self.groups * self.group_size - in_features
        self.weight = nn.Parameter(torch.randn(self.groups, self.group_size, width) / self.group_size**0.5)
        self.bias = nn.Parameter(torch.zeros(self.groups, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, self.padding)).view(x.shape[0], self.groups, self.group_size)
        return torch.einsum("bgs,gsw->bgw", x, self.weight) + self.bias


class InstanceTokens(nn.Module):
    """Bags x (b, n, f), mask (b, n) -> one token per instance (Linear + GELU) and the mask."""

    def __init__(self, in_features: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_features, width), nn.GELU())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(x), mask.bool()


TOKENISERS: dict[str, Callable[[dict[str, torch.Tensor], int, float], nn.Module]] = {
    "tabular": lambda example, width, dropout: FeatureGroupTokens(example["x"].shape[1], width),
    "bags": lambda example, width, dropout: InstanceTokens(example["x"].shape[2], width),
    "timeseries": lambda example, width, dropout: IrregularTimeSeriesEncoder(
        example["values"].shape[2], width=width, dropout=dropout
    ),
    "image": lambda example, width, dropout: SmallCNN(example["x"].shape[1], width=min(width, 32)),
}
"""The attention-fusion baseline's tokens per kind: feature groups, instances, visits with their
times, CNN feature-map cells."""


def _tokeniser(kind: str, example: dict[str, torch.Tensor], width: int, dropout: float) -> nn.Module:
    """The kind's tokens for the attention-fusion baseline."""
    return TOKENISERS[kind](example, width, dropout)


class AttentionFusionNet(nn.Module):
    """HEALNet-style hybrid fusion: a learned latent array (c, d) is updated, for each present
    modality in turn, by that modality's own cross-attention to its tokens (+ feed-forward) and
    then by a latent self-attention update shared across the modality steps; mean over the
    latent channels -> LayerNorm -> linear head. Absent modalities are skipped."""

    def __init__(
        self,
        examples: dict[str, dict[str, torch.Tensor]],
        n_outputs: int,
        width: int,
        dropout: float,
        latents: int = ATTENTION_LATENTS,
    ) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.randn(latents, width) * 0.02)
        self.tokenisers = nn.ModuleDict(
            {m: _tokeniser(kind_of_tensors(x), x, width, dropout) for m, x in examples.items()}
        )
        self.cross = nn.ModuleDict(
            {
                m: LatentUpdate(
                    width, _token_width(self.tokenisers[m], x), ATTENTION_HEADS, ATTENTION_HEAD_DIM, dropout
                )
                for m, x in examples.items()
            }
        )
        self.self_update = LatentUpdate(width, width, ATTENTION_HEADS, ATTENTION_HEAD_DIM, dropout)
        self.head = TaskHead(width, n_outputs)

    def forward(self, inputs: dict[str, dict[str, torch.Tensor] | None]) -> torch.Tensor:
        latent: torch.Tensor | None = None
        for m, tokeniser in self.tokenisers.items():
            tensors = inputs.get(m)
            if tensors is None:
                continue
            tokens, mask = _as_tokens(tokeniser(**tensors))
            if latent is None:
                latent = self.latent.expand(tokens.shape[0], -1, -1)
            latent = self.cross[m](latent, tokens, mask)
            latent = self.self_update(latent, latent, None)
        assert latent is not None, "a batch holds at least one modality"
        return self.head(latent)


def fit_attention_fusion(train: TensorSet, validation: TensorSet, task: Task, config: BaselineConfig) -> FittedBaseline:
    """Attention-based hybrid fusion after HEALNet (Hemker et al., 2024) / Perceiver (Jaegle et
    al., 2021): a 16 x ``width`` latent array; modality-specific cross-attention weights, latent
    self-attention weights shared across modality steps (as in HEALNet); one pass over the
    modalities. Tokens: tabular = 8 feature groups, bags = instances, time series = visits with
    their time encoding, images = 4x4 CNN feature-map cells. Early stopping on validation loss.
    Limits: one pass only (HEALNet iterates several); no raw-feature Fourier encodings."""
    torch.manual_seed(config.seed)
    model = AttentionFusionNet(_examples(train, config.modalities), task.n_outputs, config.width, config.dropout)
    return _fit_network("attention-fusion", model, train, validation, task, config)


def site_rows(targets: Targets, rows: np.ndarray, n_sites: int, seed: int) -> list[np.ndarray]:
    """``rows`` dealt at random into ``n_sites`` sites, stratified by event or label."""
    if not 1 <= n_sites <= len(rows):
        raise ValueError(f"cannot split {len(rows)} training patients into {n_sites} sites")
    stratum = (targets["event"] if "event" in targets else targets["label"]).numpy()
    shuffled = np.random.default_rng(seed).permutation(rows)
    ordered = shuffled[np.argsort(stratum[shuffled], kind="stable")]
    return [np.sort(ordered[k::n_sites]) for k in range(n_sites)]


def _improves(loss: float, best: float) -> bool:
    """A round is kept when its validation loss is finite and lower than the best so far, or when no
    round so far had a finite loss (then the latest round, never the untrained model, is kept)."""
    if np.isfinite(loss):
        return not np.isfinite(best) or loss < best
    return not np.isfinite(best)


def fit_fedavg_early_fusion(
    train: TensorSet, validation: TensorSet, task: Task, config: BaselineConfig
) -> FittedBaseline:
    """``early-fusion`` trained with FedAvg (McMahan et al., 2017), in process: the training rows
    are dealt into ``fedavg_sites`` sites (random, stratified, seeded); each of ``fedavg_rounds``
    rounds every site trains the global model for ``fedavg_local_epochs`` epochs (fresh AdamW),
    and the server takes the sample-weighted mean of the full state dicts. The round kept is the
    one with the lowest validation loss on the validation set (standing for the sites' pooled
    validation patients; sample-weighted by construction). ``bytes_per_site`` = 2 x rounds x
    parameters x 4 (receive + send float32 weights each round).
    Limits: flat features are standardised on the pooled training rows (as the tensors given);
    no client sampling, no secure aggregation."""
    model, features, train_f, validation_f = _early_fusion_parts(train, validation, task, config)
    sites = site_rows(
        train_f.targets, np.flatnonzero(train_f.present[FEATURES].numpy()), config.fedavg_sites, config.seed
    )
    best = (float("inf"), 0, copy.deepcopy(model.state_dict()))
    for round_ in range(1, config.fedavg_rounds + 1):
        states = []
        for k, rows in enumerate(sites):
            local = copy.deepcopy(model)
            local_config = replace(
                config.training, epochs=config.fedavg_local_epochs, seed=config.seed + 1000 * round_ + k
            )
            fit(local, train_f.subset(rows), None, task, local_config, description=f"fedavg site {k}")
            states.append(local.state_dict())
        model.load_state_dict(average_states(states, [len(rows) for rows in sites]))
        loss = evaluate_loss(model, validation_f, task) if len(validation_f) else float("nan")
        if _improves(loss, best[0]):
            best = (loss, round_, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    count = _parameter_count(model)
    selection = {"best_round": best[1], "validation_loss": best[0], "sites": [len(rows) for rows in sites]}
    return FedAvgBaseline(
        "fedavg-early-fusion",
        task,
        count,
        selection,
        model,
        features.tensor_set,
        bytes_per_site=2 * config.fedavg_rounds * count * 4,
    )


BASELINES: dict[str, Callable[[TensorSet, TensorSet, Task, BaselineConfig], FittedBaseline]] = {
    "cox-early": fit_cox_early,
    "cox-late": fit_cox_late,
    "early-fusion": fit_early_fusion,
    "late-fusion": fit_late_fusion,
    "attention-fusion": fit_attention_fusion,
    "fedavg-early-fusion": fit_fedavg_early_fusion,
}


def fit_baseline(
    name: str, train: TensorSet, validation: TensorSet, task: Task, config: BaselineConfig
) -> FittedBaseline:
    """Fit the named baseline on ``train``, selecting on ``validation`` only."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid: {sorted(BASELINES)}")
    missing = [m for m in config.modalities if m not in train.inputs or m not in validation.inputs]
    if not config.modalities or missing:
        raise ValueError(f"baseline modalities must be non-empty and held by both sets; missing: {missing}")
    return BASELINES[name](train, validation, task, config)
