"""Simulated hospitals: one per site folder (``site-folders``: read as ``fedlego site`` reads it,
roles from its split.csv or hashed), or a cohort (a bundled data set or a pooled site folder) cut
into sites by the run's scenario settings, each site with its patient roles from the run's global
fold (the centralized pipeline's folds)."""

from __future__ import annotations

from pathlib import Path

from fedlego.client.runtime import SiteRuntime
from fedlego.common.config import RunConfig
from fedlego.common.data.dataset import MultimodalDataset
from fedlego.common.data.presets import run_cohort
from fedlego.common.data.scenarios import Scenario, build_scenario, dataset_splits, site_dataset, site_split
from fedlego.common.data.sitefolder import SiteData, folder_digest, read_site_folder


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
    """Site number ``index``: its site folder, or its share of the scenario with its roles from
    the run's global fold."""
    folders = config.scenario.folder_list()
    if folders:
        if not 0 <= index < len(folders):
            raise ValueError(f"site index {index} outside the {len(folders)} site folders")
        data = read_site_folder(Path(folders[index]))
        site = SiteRuntime.from_site_data(data, config.disclosure.min_cell)
        if config.coordinator.schema:
            site.check_schema(data, Path(config.coordinator.schema))
        return site
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
    return SiteRuntime(
        spec.name,
        site_dataset(dataset, spec),
        site_split(spec, dataset, split),
        cohort_source(config),
        min_cell=config.disclosure.min_cell,
    )


def cohort_source(config: RunConfig) -> dict[str, str]:
    """How results name the cohort a scenario is cut from."""
    scenario = config.scenario
    if scenario.data:
        data = Path(scenario.data).resolve()
        return {"source": "site-folder", "path": str(data), "sha256": folder_digest(data)}
    return {"source": "bundled", "dataset": scenario.dataset}


def site_folders(config: RunConfig) -> list[SiteData]:
    """Every site folder of a ``site-folders`` run, read and validated (SiteDataError naming the
    file at fault); their names must differ."""
    sites = [read_site_folder(Path(folder)) for folder in config.scenario.folder_list()]
    names = [s.name for s in sites]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"site folders must have different names in site.json; repeated: {repeated}")
    return sites
