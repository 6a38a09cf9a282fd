"""Settings of a federated run (from a flat run config) and how simulated sites are built.

The run config is the flat key/value table of ``[tool.flwr.app.config]`` in pyproject.toml,
overridable with ``flwr run . --run-config``; the same keys drive ``fedlego simulate``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fedlego.client.runtime import SiteRuntime
from fedlego.common.data.bundled import load_dataset
from fedlego.common.data.dataset import MultimodalDataset
from fedlego.common.data.scenarios import Scenario, build_scenario, dataset_splits, site_dataset, site_split
from fedlego.common.data.synthetic import default_synthetic_modalities
from fedlego.common.privacy import PrivacyConfig
from fedlego.common.training import TrainConfig
from fedlego.common.workflow import ModelConfig

DATASET_MODALITIES = {"tcga-acc": "clinical,rna,mirna,cnv", "pbc": "baseline,labs"}
DATASET_PREPROCESSING = {"pbc": {"labs": {"log_transform": True}}}


@dataclass
class FederationSettings:
    """Every knob of a federated run, with the run-config key spelled with dashes."""

    dataset: str = "tcga-acc"
    task: str = "survival"
    modalities: str = ""
    layout: str = "modality-sites"
    paired_sites: int = 1
    paired_fraction: float = 0.3
    sites_per_modality: int = 1
    overlap: float = 0.0
    missing_rate: float = 0.0
    imbalance: float = 0.0
    synthetic_patients: int = 300
    synthetic_modalities: int = 3
    seed: int = 0
    fold: int = 0
    block_epochs: int = 50
    patience: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 32
    block_rounds: int = 2
    block_local_epochs: int = 5
    latent_merge: str = "harmonic"
    head_merge: str = "slerp"
    weighting: str = "samples"
    fuse_mode: str = "stack"
    fuse_rounds: int = 2
    fuse_local_epochs: int = 1
    fuse_aggregation: str = "fedavg"
    proximal_mu: float = 0.01
    block_dp_epsilon: float = 0.0
    block_dp_clip: float = 1.0
    fuse_dp_noise: float = 0.0
    fuse_dp_clip: float = 1.0
    fuse_dp_delta: float = 1e-5
    latent_channels: int = 32
    latent_dim: int = 32
    frequency: bool = True
    min_sites: int = 1
    min_responses: int = 1
    wait_timeout: float = 120.0
    phase_timeout: float = 600.0
    max_package_mb: float = 256.0
    trusted_sites: str = ""
    coordinator_key: str = ""
    device: str = "auto"
    out_dir: str = ""
    run_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationSettings:
        """Parse a flat run config; unknown keys are kept in ``extra`` (and reported)."""
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {}
        extra = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in known:
                extra[key] = value
                continue
            default = getattr(cls(), name)
            try:
                values[name] = type(default)(value) if not isinstance(default, bool) else _as_bool(value)
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"run config key {key!r}: cannot read {value!r} as {type(default).__name__}"
                ) from error
        settings = cls(**values, extra=extra)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject settings that cannot work, naming the key."""
        if self.fuse_aggregation not in ("fedavg", "fedprox"):
            raise ValueError(f"fuse-aggregation must be fedavg or fedprox, not {self.fuse_aggregation!r}")
        if self.fuse_mode not in ("stack", "weave"):
            raise ValueError(f"fuse-mode must be stack or weave, not {self.fuse_mode!r}")
        for key in ("min_sites", "min_responses"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key.replace('_', '-')} must be at least 1")
        for key in ("block_dp_epsilon", "fuse_dp_noise"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key.replace('_', '-')} must be at least 0 (0 = off)")
        for key in ("block_dp_clip", "fuse_dp_clip"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key.replace('_', '-')} must be positive")
        if not 0 < self.fuse_dp_delta < 1:
            raise ValueError("fuse-dp-delta must lie in (0, 1)")
        if self.block_dp_epsilon > 0 and self.block_rounds > 0:
            raise ValueError(
                "block-dp-epsilon needs block-rounds = 0: block FedAvg rounds train without DP-SGD "
                "and would spend privacy the blocks' epsilon does not account for"
            )

    def modality_list(self) -> list[str]:
        """Modalities of the run (the dataset's preset when empty)."""
        text = self.modalities or DATASET_MODALITIES.get(self.dataset, "")
        return [m.strip() for m in text.split(",") if m.strip()]

    def model_config(self) -> ModelConfig:
        """Block architecture for every site."""
        return ModelConfig(
            latent_channels=self.latent_channels, latent_dim=self.latent_dim, frequency=self.frequency, seed=self.seed
        )

    def block_training(self) -> TrainConfig:
        """Local block training (early stopping on validation)."""
        return TrainConfig(
            epochs=self.block_epochs,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            patience=self.patience,
            seed=self.seed,
            device=self.device,
        )

    def block_privacy(self) -> PrivacyConfig | None:
        """DP-SGD for block training (``block-dp-epsilon`` > 0), delta from each site's size."""
        if self.block_dp_epsilon <= 0:
            return None
        return PrivacyConfig(target_epsilon=self.block_dp_epsilon, max_grad_norm=self.block_dp_clip)

    def round_training(self, epochs: int) -> TrainConfig:
        """A fixed number of local epochs for one FedAvg round (no early stopping)."""
        return TrainConfig(
            epochs=epochs,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            patience=epochs,
            seed=self.seed,
            device=self.device,
        )

    def preprocessing(self) -> dict[str, dict[str, Any]]:
        """Preprocessing options per modality for the bundled datasets."""
        return DATASET_PREPROCESSING.get(self.dataset, {})

    def run_id(self) -> str:
        """Stable id of this configuration (binds packages to the run)."""
        if self.run_name:
            return self.run_name
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"run-{digest[:12]}"


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def scenario_dataset(settings: FederationSettings) -> MultimodalDataset:
    """The cohort a simulated federation is built from, restricted to the run's modalities."""
    if settings.dataset == "synthetic":
        dataset = load_dataset(
            "synthetic",
            n_patients=settings.synthetic_patients,
            modalities=default_synthetic_modalities(settings.synthetic_modalities),
            seed=settings.seed,
        )
    elif settings.dataset == "pbc":
        dataset = load_dataset("pbc", task=settings.task)
    else:
        dataset = load_dataset(settings.dataset)
    modalities = settings.modality_list() or sorted(dataset.modalities)
    return dataset.subset(dataset.patient_ids(), modalities)


def simulated_scenario(settings: FederationSettings, dataset: MultimodalDataset) -> Scenario:
    """How the cohort is cut into sites for this run."""
    return build_scenario(
        dataset,
        settings.layout,
        paired_sites=settings.paired_sites,
        paired_fraction=settings.paired_fraction,
        overlap=settings.overlap,
        missing_rate=settings.missing_rate,
        imbalance=settings.imbalance,
        sites_per_modality=settings.sites_per_modality,
        seed=settings.seed,
    )


def simulated_site(settings: FederationSettings, index: int) -> SiteRuntime:
    """Site number ``index`` of the scenario, with its roles from the run's global fold."""
    dataset = scenario_dataset(settings)
    scenario = simulated_scenario(settings, dataset)
    if not 0 <= index < len(scenario.sites):
        raise ValueError(
            f"site index {index} outside the scenario's {len(scenario.sites)} sites "
            "(set num-supernodes to the number of sites)"
        )
    spec = scenario.sites[index]
    split = dataset_splits(dataset, n_folds=settings.fold + 1, seed=settings.seed)[settings.fold]
    return SiteRuntime(spec.name, site_dataset(dataset, spec), site_split(spec, dataset, split))
