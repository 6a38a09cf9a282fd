"""Simulated hospitals: a bundled cohort cut into sites by the run's scenario settings, each site
with its patient roles from the run's global fold (the centralized pipeline's folds)."""

from __future__ import annotations

from fedlego.client.runtime import SiteRuntime
from fedlego.common.config import RunConfig
from fedlego.common.data.dataset import MultimodalDataset
from fedlego.common.data.presets import run_cohort
from fedlego.common.data.scenarios import Scenario, build_scenario, dataset_splits, site_dataset, site_split


def simulated_scenario(config: RunConfig, dataset: MultimodalDataset) -> Scenario:
    """How the cohort is cut into sites for this run."""
    scenario = config.scenario
    return build_scenario(
        dataset,
        scenario.layout,
        paired_sites=scenario.paired_sites,
        paired_fraction=scenario.paired_fraction,
        overlap=scenario.overlap,
        missing_rate=scenario.missing_rate,
        imbalance=scenario.imbalance,
        sites_per_modality=scenario.sites_per_modality,
        seed=config.seed,
    )


def simulated_site(config: RunConfig, index: int) -> SiteRuntime:
    """Site number ``index`` of the scenario, with its roles from the run's global fold."""
    dataset = run_cohort(config)
    scenario = simulated_scenario(config, dataset)
    if not 0 <= index < len(scenario.sites):
        raise ValueError(
            f"site index {index} outside the scenario's {len(scenario.sites)} sites "
            "(set num-supernodes to the number of sites)"
        )
    spec = scenario.sites[index]
    fold = config.scenario.fold
    split = dataset_splits(dataset, n_folds=fold + 1, seed=config.seed)[fold]
    return SiteRuntime(spec.name, site_dataset(dataset, spec), site_split(spec, dataset, split))
