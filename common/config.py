"""One configuration for every way of running fedlego: the centralized pipeline, a simulated
federation and a deployment read the same dataclasses, with the same defaults.

``RunConfig`` groups the sections (scenario, model, block training, merge, fuse, federated rounds,
DP-SGD of blocks, central DP of fuse rounds, coordinator). Each section field has one flat
run-config key (``block-epochs``, ``latent-channels``...): ``[tool.flwr.app.config]`` of the Flower
app is generated from them (:func:`app_config_toml`, checked by a test), ``--set KEY=VALUE`` sets any
of them in ``fedlego simulate`` and ``fedlego run``, and ``fedlego centralized`` has an option per
key of the sections it uses. The run's ``seed`` is one key shared by every section.
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import inspect
import itertools
import json
import math
import textwrap
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedlego.common.disclosure import DEFAULT_MIN_CELL
from fedlego.common.registry import registered_names

if TYPE_CHECKING:  # the CLI imports this module on every command: no torch at import time
    from fedlego.common.aggregation import ServerOptimizer
    from fedlego.common.lego import LatentContract
    from fedlego.common.tasks import Task


@dataclass
class ScenarioConfig:
    """Which cohort a run uses and, for a simulated federation, how it is cut into sites."""

    dataset: str = "tcga-acc"
    """Bundled data set: tcga-acc, pbc or synthetic (unused with data or site-folders)."""
    data: str = ""
    """A site folder pooled as one cohort instead of a bundled data set (centralized --data,
    simulate --split): cut into simulated sites by the options below."""
    site_folders: str = ""
    """Site folders, one simulated hospital each (simulate --sites), separated by commas."""
    task: str = "survival"
    """PBC only: survival or binary (2-year landmark outcome)."""
    modalities: str = ""
    """Comma-separated modalities (empty: the data set's preset)."""
    layout: str = "modality-sites"
    """modality-sites (one site per modality plus paired sites) or pooled."""
    paired_sites: int = 1
    """Simulated sites holding every modality for their patients."""
    paired_fraction: float = 0.3
    """Share of the cohort held by the paired sites."""
    sites_per_modality: int = 1
    """Unimodal sites per modality."""
    overlap: float = 1.0
    """Share of the non-paired patients common to the unimodal sites (1: every unimodal site holds
    every such patient's modality; 0: disjoint sites). The default keeps the bundled cohorts' sites
    large enough to train a block and to read a test metric (at overlap 0, TCGA-ACC's four
    unimodal sites hold about 16 patients each and 2-3 test patients)."""
    missing_rate: float = 0.0
    """Share of paired-site patients lacking a modality."""
    imbalance: float = 0.0
    """Skew of patient counts across unimodal sites."""
    synthetic_patients: int = 300
    """Synthetic cohort: number of patients."""
    synthetic_modalities: int = 3
    """Synthetic cohort: number of modalities."""
    fold: int = 0
    """Which patient-level fold a federation trains and tests on (the centralized pipeline's folds)."""

    def modality_list(self) -> list[str]:
        """The modalities named in ``modalities`` (empty: the preset decides)."""
        return [m.strip() for m in self.modalities.split(",") if m.strip()]

    def folder_list(self) -> list[str]:
        """The paths in ``site_folders``."""
        return [f.strip() for f in self.site_folders.split(",") if f.strip()]

    def uses_own_data(self) -> bool:
        """Whether the run reads site folders rather than a bundled data set."""
        return bool(self.data or self.site_folders)


@dataclass
class ModelConfig:
    """Architecture of every block of a run (the latent contract comes from here)."""

    latent_channels: int = 32
    """Latent array rows (the latent contract every block shares)."""
    latent_dim: int = 32
    """Latent array width (the latent contract every block shares)."""
    steps: int = 2
    """Cross-attention latent updates per block."""
    heads: int = 4
    """Attention heads of each latent update."""
    head_dim: int = 16
    """Width of each attention head."""
    encoder_width: int = 64
    """Hidden width of the reference encoders."""
    dropout: float = 0.1
    """Dropout in encoders and latent updates."""
    frequency: bool = True
    """Latent updates in the frequency domain (false: the spatial-domain ablation)."""
    direct: bool = True
    """Each block also holds its encoder's plain linear head on the pooled tokens, and the latent
    head starts at zero, so that a block starts as the plain model (see ``LegoBlock``); false: the
    method's latent head only. Chosen on the panel's validation patients
    (docs/benchmarks/block-design.md)."""
    max_encoder_parameters: int = 50_000_000
    """Largest encoder a block may have (parameters), counted before anything is allocated."""
    seed: int = 0

    def contract(self, task: Task) -> LatentContract:
        """The latent contract blocks of this run must share."""
        from fedlego.common.lego import LatentContract

        return LatentContract(self.latent_channels, self.latent_dim, task.n_outputs, task.kind, self.seed)


@dataclass
class TrainConfig:
    """Optimisation settings for one local training run."""

    epochs: int = 50
    """Most block training epochs (early stopping on validation loss)."""
    learning_rate: float = 1e-3
    """AdamW learning rate of block training."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    batch_size: int = 32
    """Patients per batch of block training."""
    patience: int = 10
    """Early-stopping patience in epochs (validation loss)."""
    max_steps: int = 2000
    """Most optimiser steps of block training: a large cohort gets fewer epochs (and a patience
    shortened in proportion) instead of ``epochs`` passes over thousands of patients; 0: no cap.
    The bundled cohorts (at most 350 steps in 50 epochs) never reach it."""
    seed: int = 0
    device: str = "auto"
    """Where to train: ``cpu``, ``cuda``, ``cuda:1``... or ``auto`` (CUDA when available)."""
    keep_initial: bool = False
    """Count the untrained model as epoch 0 of early stopping, so that fine-tuning which never
    improves the validation loss returns the model unchanged (used for LegoFuse)."""
    min_improvement: float = 0.0
    """With ``keep_initial``: the relative validation-loss improvement over the untrained model
    an epoch needs before it replaces it."""

    def within_step_budget(self, n_rows: int) -> TrainConfig:
        """The settings for ``n_rows`` training rows: epochs cut so that at most ``max_steps``
        batches are drawn, patience shortened by the same ratio (at least 2 epochs)."""
        steps_per_epoch = max(math.ceil(n_rows / self.batch_size), 1)
        if self.max_steps <= 0 or self.epochs * steps_per_epoch <= self.max_steps:
            return self
        epochs = max(self.max_steps // steps_per_epoch, 1)
        patience = min(self.patience, max(2, math.ceil(self.patience * epochs / self.epochs)))
        return replace(self, epochs=epochs, patience=patience)

    def for_round(self, epochs: int) -> TrainConfig:
        """A fixed number of local epochs for one federated round (no early stopping)."""
        return replace(self, epochs=epochs, patience=epochs)


@dataclass
class MergeConfig:
    """How LegoMerge combines blocks (``common.merging``, ``common.aggregation.block_weights``)."""

    latent_merge: str = "harmonic"
    """harmonic, mean or sum."""
    head_merge: str = "slerp"
    """slerp or linear."""
    weighting: str = "uniform"
    """Block weights: uniform, samples or validation (see docs/benchmarks/weighting.md)."""


@dataclass
class FuseConfig:
    """LegoFuse settings: a short fine-tune (the poster's "2 epochs") on paired data."""

    mode: str = "merge"
    """merge (the merged model fine-tuned: at step 0 it is the merge), or the authors' stack or
    weave topologies (ablations)."""
    epochs: int = 2
    """Centralized pipeline: fine-tuning epochs."""
    learning_rate: float = 1e-3
    batch_size: int = 32
    freeze_encoders: bool = True
    anchor: float = 0.01
    """merge mode: penalty (anchor / 2 x squared distance) pulling the fine-tuned weights toward
    the merged ones, in place of weight decay."""
    min_improvement: float = 0.01
    """Fine-tuning replaces the untrained model (the merge, in merge mode) only when it lowers
    the validation loss by this fraction of the untrained model's (epochs and federated rounds)."""
    inner_cv_below: int = 0
    """Centralized pipeline: with fewer validation events than this (survival: events; classes:
    patients of the rarest class), the number of fine-tuning epochs (0 to fuse-epochs) is chosen
    by inner cross-validation on the paired training patients instead of on the validation
    patients (0, the default: always on the validation patients; the inner folds hold patients
    the blocks trained on, see docs/benchmarks/repeated.md)."""
    inner_folds: int = 3
    """Folds of that inner cross-validation."""
    seed: int = 0


@dataclass
class RoundsConfig:
    """Federated rounds: block FedAvg per modality held by several sites, and LegoFuse rounds."""

    block_rounds: int = 2
    """FedAvg rounds on a modality held by several sites (0: keep the largest site's block)."""
    block_local_epochs: int = 5
    """Local epochs per block FedAvg round."""
    fuse_rounds: int = 2
    """Federated LegoFuse rounds (0: no fuse)."""
    fuse_local_epochs: int = 1
    """Local epochs per fuse round."""
    fuse_aggregation: str = "fedavg"
    """fedavg or fedprox."""
    proximal_mu: float = 0.01
    """FedProx proximal term (with fuse-aggregation = fedprox)."""
    round_aggregation: str = "mean"
    """How block FedAvg and fuse rounds combine the sites' parameters: mean (FedAvg), or the robust
    coordinate-wise median or trimmed-mean (a poisoned site cannot drag them)."""
    update_norm_bound: float = 0.0
    """Scale each site's round update down to at most this many times the round's median update
    norm before combining (0: off)."""
    site_weights: str = "patients"
    """What weighs a site in block FedAvg and fuse rounds: its training patients (patients: the
    training loss is a mean over patients, so the rounds pursue the pooled loss) or its training
    events (events; classification: patients of the rarest class), released only from min-cell on
    (a site under it weighs 0 unless every site is). Chosen with ``start-site`` on validation
    patients of the realistic-split benchmark (docs/benchmarks/splits-seeds.md)."""
    start_site: str = "events"
    """Which site's block (and its preprocessing) a modality's rounds start from when several sites
    hold it, and the merge keeps with block-rounds = 0: the site with the most training events
    (events, as released: from min-cell on; its patients break ties; a large site with few events
    has learned little about risk) or the most training patients (patients). Chosen with
    ``site-weights`` (docs/benchmarks/splits-seeds.md)."""
    shared_preprocessing: str = "start-site"
    """The preprocessing of a modality several sites hold: pooled (each site sends at describe the
    preprocessing statistics its block package would carry anyway; the coordinator pools them and
    every site trains its block with the pooled one) or start-site (each site fits its own; the
    rounds use the start site's). A kind without a pooling rule, or sites fitted with different
    options, keep start-site."""
    unvalidated_rounds: str = "last"
    """When no site can report a validation loss (all under the disclosure threshold), keep the
    last round's parameters (last) or those the rounds started from (start: the largest site's
    block, or the merge). Chosen on validation patients across the realistic-split benchmark
    (docs/benchmarks/splits.md)."""
    round_patience: int = 0
    """Stop block FedAvg and fuse rounds once this many rounds in a row failed to lower the pooled
    validation loss by fuse-min-improvement; block-rounds and fuse-rounds are then budgets (0: run
    them all)."""
    server_optimizer: str = "fedavg"
    """How a round steps from the parameters it sent to the next: fedavg (the round's aggregate) or
    the adaptive fedadam, fedyogi, fedadagrad (Reddi et al. 2021), with server-lr, -beta1, -beta2, -tau."""
    server_lr: float = 0.01
    """Adaptive server optimizers: the server learning rate (eta)."""
    server_beta1: float = 0.9
    """Adaptive server optimizers: momentum of the pseudo-gradient."""
    server_beta2: float = 0.99
    """Adaptive server optimizers: decay of the second moment (fedadam, fedyogi)."""
    server_tau: float = 1e-3
    """Adaptive server optimizers: adaptivity (added to the root of the second moment)."""

    def server_step(self) -> ServerOptimizer:
        """A fresh server optimizer for one set of parameters (a block's or the fused model's rounds)."""
        from fedlego.common.aggregation import SERVER_OPTIMIZERS  # torch: imported on use

        return SERVER_OPTIMIZERS[self.server_optimizer](
            self.server_lr, self.server_beta1, self.server_beta2, self.server_tau
        )


@dataclass
class PrivacyConfig:
    """DP-SGD settings of block training: a target epsilon (calibrates the noise) or a fixed
    noise multiplier; ``delta`` 0 means :func:`fedlego.common.privacy.default_delta` of the
    training set size. Epsilon and noise 0: no DP."""

    target_epsilon: float = 0.0
    """DP-SGD of blocks: target epsilon per block (0: off; needs block-rounds = 0)."""
    noise_multiplier: float = 0.0
    """DP-SGD of blocks: a fixed noise multiplier instead of a target epsilon (0: calibrated)."""
    max_grad_norm: float = 1.0
    """DP-SGD of blocks: per-patient gradient clipping norm."""
    delta: float = 0.0
    """DP-SGD of blocks: delta (0: min(1e-5, 1/n to a power of ten))."""

    @property
    def enabled(self) -> bool:
        """Whether blocks train with DP-SGD."""
        return self.target_epsilon > 0 or self.noise_multiplier > 0

    def validate(self) -> None:
        """Reject settings that cannot work."""
        if self.max_grad_norm <= 0:
            raise ValueError("DP clipping norm (block-dp-clip) must be positive")
        if self.target_epsilon < 0 or self.noise_multiplier < 0:
            raise ValueError("block-dp-epsilon and block-dp-noise must be at least 0 (0 = off)")
        if self.delta and not 0 < self.delta < 1:
            raise ValueError("block-dp-delta must lie in (0, 1) (0 = automatic)")


@dataclass
class CentralPrivacyConfig:
    """Central DP of the fuse rounds (DP-FedAvg): noise multiplier (0 = off), clip and delta."""

    noise: float = 0.0
    """Fuse rounds: DP-FedAvg noise multiplier (0: plain FedAvg)."""
    clip: float = 1.0
    """Fuse rounds: clipping norm of each site's update."""
    delta: float = 1e-5
    """Fuse rounds: delta of the reported epsilon."""


@dataclass
class CoordinatorConfig:
    """What only the coordinator of a federation uses."""

    min_sites: int = 0
    """Sites that must be connected before the run starts (0: every site of the consortium, the
    signers of trusted-sites; without that list, the sites connected when the run starts)."""
    min_responses: int = 1
    """Answers a phase needs to go on."""
    allow_partial: bool = False
    """Record a run that lacks a registered site, a declared modality or paired sites of the fuse
    as completed (true) instead of incomplete (false: `fedlego run` and `simulate` exit 1)."""
    wait_timeout: float = 120.0
    """Seconds to wait for min-sites to connect."""
    phase_timeout: float = 600.0
    """Seconds a phase waits for the sites' answers."""
    max_package_mb: float = 256.0
    """Largest block package accepted (MiB)."""
    max_weight_ratio: float = 10.0
    """A block's weights may be at most this many times larger (or smaller) in L2 norm than the
    same architecture freshly initialised (trained blocks measured 1.0-1.08); 0 disables the check."""
    trusted_sites: str = ""
    """trusted-sites.json (made by ``fedlego certs``): then unsigned packages are refused."""
    coordinator_key: str = ""
    """The key that signs merged and fused models (made by ``fedlego certs``)."""
    out_dir: str = ""
    """Coordinator folder for results.json, packages, audit log and checkpoint."""
    run_name: str = ""
    """Run id (empty: a hash of the settings)."""
    schema: str = ""
    """Consortium schema file (`fedlego schema`): the coordinator records its SHA-256 and refuses a site
    that checked its data against another one (or none); simulated sites check their data against it."""


@dataclass
class DisclosureConfig:
    """Disclosure control of what sites send (see ``common.disclosure``)."""

    min_cell: int = DEFAULT_MIN_CELL
    """Fewest patients behind any category, statistic, count, cut point or metric a site sends; rarer
    categories fold into 'other', and a modality with fewer training patients is not trained. A site's
    own site.json min_cell can only raise it. 1: off."""


@dataclass(frozen=True)
class Section:
    """How one section's fields are spelled as flat run-config keys."""

    attribute: str
    kind: type
    prefix: str = ""
    rename: Mapping[str, str] = field(default_factory=dict)
    internal: tuple[str, ...] = ()
    """Fields that are no run-config key (the shared seed, set from ``RunConfig.seed``)."""

    def key(self, name: str) -> str:
        return self.rename.get(name) or self.prefix + name.replace("_", "-")

    def keyed_fields(self) -> Iterator[Any]:
        return (f for f in fields(self.kind) if f.name not in self.internal)


SECTIONS = (
    Section("scenario", ScenarioConfig),
    Section("model", ModelConfig, internal=("seed",)),
    Section(
        "training",
        TrainConfig,
        rename={"epochs": "block-epochs"},
        internal=("seed", "keep_initial", "min_improvement"),
    ),
    Section("rounds", RoundsConfig),
    Section("merge", MergeConfig),
    Section("fuse", FuseConfig, prefix="fuse-", rename={"freeze_encoders": "freeze-encoders"}, internal=("seed",)),
    Section(
        "privacy",
        PrivacyConfig,
        rename={
            "target_epsilon": "block-dp-epsilon",
            "noise_multiplier": "block-dp-noise",
            "max_grad_norm": "block-dp-clip",
        },
        prefix="block-dp-",
    ),
    Section("fuse_privacy", CentralPrivacyConfig, prefix="fuse-dp-"),
    Section("coordinator", CoordinatorConfig),
    Section("disclosure", DisclosureConfig),
)
CHOICES = {
    "dataset": ("tcga-acc", "pbc", "synthetic"),
    "fuse-aggregation": registered_names("aggregation", "FUSE_AGGREGATIONS"),
    "round-aggregation": registered_names("aggregation", "ROUND_AGGREGATIONS"),
    "fuse-mode": registered_names("lego", "FUSE_MODES"),
    "latent-merge": registered_names("merging", "LATENT_MERGES"),
    "head-merge": registered_names("merging", "HEAD_MERGES"),
    "weighting": registered_names("aggregation", "WEIGHTINGS"),
    "server-optimizer": registered_names("aggregation", "SERVER_OPTIMIZERS"),
    "unvalidated-rounds": ("start", "last"),
    "site-weights": ("patients", "events"),
    "start-site": ("patients", "events"),
    "shared-preprocessing": ("pooled", "start-site"),
    "task": ("survival", "binary"),
    "layout": ("modality-sites", "pooled"),
}
"""The allowed values of the choice options; the methods' names come from their registries
(``common.registry``), read without importing torch."""


@dataclass
class RunConfig:
    """Everything that defines a run, section by section; ``seed`` seeds every section."""

    seed: int = 0
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    """Block training (early stopping on validation patients)."""
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    """DP-SGD of block training."""
    fuse_privacy: CentralPrivacyConfig = field(default_factory=CentralPrivacyConfig)
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    disclosure: DisclosureConfig = field(default_factory=DisclosureConfig)

    def __post_init__(self) -> None:
        for section in (self.model, self.training, self.fuse):
            section.seed = self.seed

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> RunConfig:
        """A run config from flat keys (a Flower run config, ``--set`` items); unknown keys and
        values of the wrong type are errors naming the key."""
        known = flat_fields()
        unknown = sorted(set(values) - set(known) - {"seed"})
        if unknown:
            hints = [difflib.get_close_matches(k, [*known, "seed"], n=1) for k in unknown]
            described = ", ".join(
                f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in zip(unknown, hints, strict=True)
            )
            raise ValueError(f"unknown run-config keys {described}; `fedlego config` lists every key")
        sections: dict[str, dict[str, Any]] = {s.attribute: {} for s in SECTIONS}
        for key, value in values.items():
            if key == "seed":
                continue
            section, name, kind = known[key]
            sections[section.attribute][name] = _convert(key, value, kind)
        config = cls(
            seed=_convert("seed", values.get("seed", 0), int),
            **{s.attribute: s.kind(**sections[s.attribute]) for s in SECTIONS},
        )
        config.validate()
        return config

    def to_flat(self) -> dict[str, Any]:
        """Every flat run-config key with its value (the inverse of ``from_flat``)."""
        flat: dict[str, Any] = {"seed": self.seed}
        for section in SECTIONS:
            part = getattr(self, section.attribute)
            flat.update({section.key(f.name): getattr(part, f.name) for f in section.keyed_fields()})
        return flat

    def validate(self) -> None:
        """Reject settings that cannot work, naming the key."""
        flat = self.to_flat()
        for key, allowed in CHOICES.items():
            if flat[key] not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {flat[key]!r}")
        for key in AT_LEAST_ONE:
            if flat[key] < 1:
                raise ValueError(f"{key} must be at least 1")
        self.privacy.validate()
        for broken, message in RULES:
            if broken(self):
                raise ValueError(message)

    def block_privacy(self) -> PrivacyConfig | None:
        """DP-SGD for block training, or None without it."""
        return self.privacy if self.privacy.enabled else None

    def run_id(self) -> str:
        """Stable id of this configuration (binds packages to the run)."""
        if self.coordinator.run_name:
            return self.coordinator.run_name
        digest = hashlib.sha256(json.dumps(self.to_flat(), sort_keys=True).encode()).hexdigest()
        return f"run-{digest[:12]}"


@functools.cache
def flat_fields() -> dict[str, tuple[Section, str, type]]:
    """Every flat key but ``seed``: its section, field name and Python type."""
    known = {}
    for section in SECTIONS:
        hints = typing.get_type_hints(section.kind)
        for f in section.keyed_fields():
            known[section.key(f.name)] = (section, f.name, hints[f.name])
    return known


AT_LEAST_ONE = (
    "min-responses",
    "min-cell",
    "block-epochs",
    "batch-size",
    "fuse-batch-size",
    "latent-channels",
    "latent-dim",
    "steps",
    "heads",
    "head-dim",
    "encoder-width",
)
"""Integer settings that must be at least 1."""
RULES: tuple[tuple[Callable[[RunConfig], bool], str], ...] = (
    (lambda c: c.training.max_steps < 0, "max-steps must be at least 0 (0 = no cap)"),
    (lambda c: not 0 <= c.model.dropout < 1, "dropout must lie in [0, 1)"),
    (
        lambda c: bool(c.scenario.data and c.scenario.site_folders),
        "data (one pooled folder) and site-folders (one folder per site) exclude each other",
    ),
    (lambda c: c.rounds.update_norm_bound < 0, "update-norm-bound must be at least 0 (0 = off)"),
    (lambda c: c.coordinator.min_sites < 0, "min-sites must be at least 0 (0 = every registered site)"),
    (lambda c: c.rounds.round_patience < 0, "round-patience must be at least 0 (0 = run every round)"),
    (lambda c: c.rounds.server_lr <= 0, "server-lr must be positive"),
    (
        lambda c: not (0 <= c.rounds.server_beta1 < 1 and 0 <= c.rounds.server_beta2 < 1),
        "server-beta1 and server-beta2 must lie in [0, 1)",
    ),
    (lambda c: c.rounds.server_tau <= 0, "server-tau must be positive"),
    (
        lambda c: c.fuse_privacy.noise > 0 and c.rounds.round_aggregation != "mean",
        "fuse-dp-noise needs round-aggregation = mean: DP-FedAvg clips and averages by itself",
    ),
    (lambda c: c.fuse.anchor < 0, "fuse-anchor must be at least 0"),
    (lambda c: not 0 <= c.fuse.min_improvement < 1, "fuse-min-improvement must lie in [0, 1)"),
    (lambda c: c.fuse.inner_cv_below < 0, "fuse-inner-cv-below must be at least 0 (0 = off)"),
    (lambda c: c.fuse.inner_folds < 2, "fuse-inner-folds must be at least 2"),
    (lambda c: c.fuse_privacy.noise < 0, "fuse-dp-noise must be at least 0 (0 = off)"),
    (lambda c: c.fuse_privacy.clip <= 0, "fuse-dp-clip must be positive"),
    (lambda c: not 0 < c.fuse_privacy.delta < 1, "fuse-dp-delta must lie in (0, 1)"),
    (
        lambda c: c.privacy.enabled and c.rounds.block_rounds > 0,
        "block-dp-epsilon needs block-rounds = 0: block FedAvg rounds train without DP-SGD "
        "and would spend privacy the blocks' epsilon does not account for",
    ),
)
"""Combinations of settings that cannot work: (is it broken?, why), checked in order."""


def flat_defaults() -> dict[str, Any]:
    """Every flat run-config key with its default."""
    return RunConfig().to_flat()


def key_help(key: str) -> str:
    """The docstring of a key's field (empty when it has none)."""
    if key == "seed":
        return "Seed of splits, initialisation and training."
    section, name, _ = flat_fields()[key]
    return _field_docs(section.kind).get(name, "")


@functools.cache
def _field_docs(kind: type) -> dict[str, str]:
    """Field docstrings (the string literal right after a field) of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(kind)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for previous, node in itertools.pairwise(body):
        if (
            isinstance(previous, ast.AnnAssign)
            and isinstance(previous.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[previous.target.id] = " ".join(node.value.value.split())
    return docs


def _convert(key: str, value: Any, kind: type) -> Any:
    """A flat value as the field's type; bools accept true/false/1/0/yes/no."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"run config key {key!r}: cannot read {value!r} as true/false")
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"run config key {key!r}: cannot read {value!r} as {kind.__name__}") from error


def toml_value(value: Any) -> str:
    """A scalar as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def app_config_toml() -> str:
    """The Flower app's ``[tool.flwr.app.config]`` table: every key with its default, commented."""
    lines = ["[tool.flwr.app.config]"]
    for key, value in flat_defaults().items():
        text = key_help(key)
        if text:
            lines.append(f"# {text}")
        lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def write_app_config(path: Path) -> None:
    """Replace the ``[tool.flwr.app.config]`` table (the end of the Flower app's pyproject.toml)
    with :func:`app_config_toml` (``make app-config``)."""
    text = path.read_text()
    start = text.index("[tool.flwr.app.config]")
    path.write_text(text[:start] + app_config_toml())
