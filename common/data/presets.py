"""The bundled cohorts as runs use them: each data set's default modalities and preprocessing,
and one loader for the centralized pipeline, simulated federations and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedlego.common.data.bundled import load_dataset
from fedlego.common.data.dataset import MultimodalDataset
from fedlego.common.data.sitefolder import folder_preprocessing, read_site_folder
from fedlego.common.data.synthetic import default_synthetic_modalities

if TYPE_CHECKING:
    from fedlego.common.config import RunConfig


@dataclass(frozen=True)
class DatasetPreset:
    """A bundled data set's default modalities (None: all it has) and preprocessing options."""

    modalities: tuple[str, ...] | None
    preprocessing: dict[str, dict[str, Any]] = field(default_factory=dict)


PRESETS = {
    "tcga-acc": DatasetPreset(("clinical", "rna", "mirna", "cnv")),
    "pbc": DatasetPreset(("baseline", "labs"), {"labs": {"log_transform": True}}),
    "synthetic": DatasetPreset(None),
}


def preset(name: str) -> DatasetPreset:
    """The preset of a bundled data set, with a clear error for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {sorted(PRESETS)}")
    return PRESETS[name]


def load_cohort(
    name: str,
    modalities: list[str] | None = None,
    task: str = "survival",
    synthetic_patients: int = 300,
    synthetic_modalities: int = 3,
    seed: int = 0,
) -> MultimodalDataset:
    """A bundled data set restricted to ``modalities`` (default: the preset's, else all it has).
    ``task`` is PBC's outcome; the synthetic cohort is drawn with ``seed``."""
    chosen = preset(name)
    if name == "synthetic":
        dataset = load_dataset(
            "synthetic",
            n_patients=synthetic_patients,
            modalities=default_synthetic_modalities(synthetic_modalities),
            seed=seed,
        )
    elif name == "pbc":
        dataset = load_dataset("pbc", task=task)
    else:
        dataset = load_dataset(name)
    names = list(modalities or chosen.modalities or sorted(dataset.modalities))
    missing = [m for m in names if m not in dataset.modalities]
    if missing:
        raise ValueError(f"dataset {name!r} has no modalities {missing}; it has {sorted(dataset.modalities)}")
    return dataset.subset(dataset.patient_ids(), names)


def run_cohort(config: RunConfig) -> MultimodalDataset:
    """The cohort a run's scenario names: its pooled site folder (``data``) or a bundled data
    set, restricted to its modalities."""
    scenario = config.scenario
    if scenario.data:
        return folder_cohort(Path(scenario.data), scenario.modality_list() or None)
    return load_cohort(
        scenario.dataset,
        scenario.modality_list() or None,
        task=scenario.task,
        synthetic_patients=scenario.synthetic_patients,
        synthetic_modalities=scenario.synthetic_modalities,
        seed=config.seed,
    )


def folder_cohort(path: Path, modalities: list[str] | None = None) -> MultimodalDataset:
    """A site folder read and validated as ``fedlego site`` reads it, as one cohort restricted to
    ``modalities`` (default: all it holds)."""
    dataset = read_site_folder(path).dataset
    names = list(modalities or dataset.modalities)
    missing = [m for m in names if m not in dataset.modalities]
    if missing:
        raise ValueError(f"site folder {path} has no modalities {missing}; it has {sorted(dataset.modalities)}")
    return dataset.subset(dataset.patient_ids(), names)


def preprocessing_for(config: RunConfig) -> dict[str, dict[str, Any]]:
    """Preprocessing options per modality: a bundled data set's preset, or what the pooled
    folder's site.json sets (site folders of ``site-folders`` runs apply their own at each site)."""
    if config.scenario.data:
        return folder_preprocessing(Path(config.scenario.data))
    if config.scenario.site_folders:
        return {}
    return preset(config.scenario.dataset).preprocessing
