"""Patient-level evaluation folds and federated scenarios (how one data set becomes sites).

Folds are random sub-sampling splits (not k-fold): fold ``k`` draws its own stratified
train/validation/test partition with seed ``seed + k``. A patient's role in a fold is global:
a site trains on its patients that are in the fold's training set, validates on those in the
validation set, and nobody trains on a test patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dataset import ModalityData, MultimodalDataset

LAYOUTS: tuple[str, ...] = ("modality-sites", "pooled")


@dataclass
class FoldSplit:
    """One evaluation fold: disjoint patient-id lists covering the cohort."""

    fold: int
    train: list[str]
    validation: list[str]
    test: list[str]


def _split(ids: list[str], strata: list[int] | None, test_size: float, seed: int) -> tuple[list[str], list[str]]:
    """Stratified split when every stratum can be split, unstratified otherwise."""
    from sklearn.model_selection import train_test_split  # scikit-learn on use: sites load faster

    try:
        first, second = train_test_split(ids, test_size=test_size, random_state=seed, stratify=strata)
    except ValueError:
        first, second = train_test_split(ids, test_size=test_size, random_state=seed)
    return sorted(first), sorted(second)


def patient_splits(
    ids: Sequence[str],
    strata: Sequence[int] | None = None,
    n_folds: int = 5,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> list[FoldSplit]:
    """``n_folds`` random train/validation/test splits of patient ids, stratified by ``strata``.

    Fold ``k`` is drawn with seed ``seed + k``. Stratification falls back to a plain random split
    when a stratum is too small to be split.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    if strata is not None and len(strata) != len(ids):
        raise ValueError("strata must have one entry per id")
    if len(set(ids)) != len(ids) or len(ids) < 3:
        raise ValueError("ids must be unique and at least 3")
    sorted_ids = sorted(map(str, ids))
    by_id = None if strata is None else dict(zip(map(str, ids), map(int, strata), strict=True))
    stratum = None if by_id is None else [by_id[i] for i in sorted_ids]
    _, val_fraction, test_fraction = fractions
    share = test_fraction / (val_fraction + test_fraction)
    folds = []
    for k in range(n_folds):
        train, rest = _split(sorted_ids, stratum, val_fraction + test_fraction, seed + k)
        rest_stratum = None if by_id is None else [by_id[i] for i in rest]
        validation, test = _split(rest, rest_stratum, share, seed + k)
        folds.append(FoldSplit(k, train, validation, test))
    return folds


def dataset_strata(dataset: MultimodalDataset) -> list[int]:
    """Event indicator (survival) or label (classification) of ``dataset.patient_ids()``."""
    column = "event" if dataset.labels.task == "survival" else "label"
    return [int(v) for v in dataset.labels.table.loc[dataset.patient_ids(), column]]


def dataset_splits(
    dataset: MultimodalDataset,
    n_folds: int = 5,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> list[FoldSplit]:
    """``patient_splits`` of a dataset's patients, stratified by event or label."""
    return patient_splits(dataset.patient_ids(), dataset_strata(dataset), n_folds, seed, fractions)


@dataclass
class SiteSpec:
    """A simulated hospital: which modalities it holds and for which patients.

    ``withheld`` maps a modality to patients of this site that lack it here (simulated
    missingness at paired sites).
    """

    name: str
    modalities: list[str]
    patient_ids: list[str]
    withheld: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Scenario:
    """Sites derived from one data set, plus the knob values that produced them."""

    name: str
    sites: list[SiteSpec]
    settings: dict[str, Any] = field(default_factory=dict)


def _check_knobs(layout: str, paired_fraction: float, overlap: float, missing_rate: float, imbalance: float) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {list(LAYOUTS)}")
    for name, value in (
        ("paired_fraction", paired_fraction),
        ("overlap", overlap),
        ("missing_rate", missing_rate),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if not 0.0 <= imbalance < 1.0:
        raise ValueError(f"imbalance must be in [0, 1), got {imbalance}")


def _paired_sites(
    dataset: MultimodalDataset,
    paired: list[str],
    n_sites: int,
    missing_rate: float,
    rng: np.random.Generator,
) -> list[SiteSpec]:
    """Sites holding every modality; a ``missing_rate`` share of patients lacks one at random."""
    names = list(dataset.modalities)
    sites = []
    for j, chunk in enumerate(np.array_split(np.asarray(paired, dtype=object), n_sites)):
        withheld: dict[str, list[str]] = {}
        for pid in chunk:
            if len(names) > 1 and rng.random() < missing_rate:
                withheld.setdefault(names[rng.integers(len(names))], []).append(str(pid))
        sites.append(SiteSpec(f"paired-{j}", names, sorted(map(str, chunk)), withheld))
    return sites


def _unimodal_sites(
    dataset: MultimodalDataset,
    patients: list[str],
    sites_per_modality: int,
    overlap: float,
    imbalance: float,
    rng: np.random.Generator,
) -> list[SiteSpec]:
    """One or more single-modality sites per modality; each holds only patients with the data.

    A random ``overlap`` share of ``patients`` goes to every site holding their modality; each
    other patient goes to one site among those holding one of their modalities, chosen with
    weights that fall linearly from 1 to ``1 - imbalance`` (randomly assigned to sites).
    """
    owners = [(m, j) for m in dataset.modalities for j in range(sites_per_modality)]
    holders = {m: set(data.patient_ids()) for m, data in dataset.modalities.items()}
    weights = rng.permutation(np.linspace(1.0, 1.0 - imbalance, len(owners)))
    members: list[set[str]] = [set() for _ in owners]
    shared = rng.random(len(patients)) < overlap
    for pid, is_shared in zip(patients, shared, strict=True):
        eligible = [k for k, (m, _) in enumerate(owners) if pid in holders[m]]
        if is_shared:
            chosen = eligible
        else:
            p = weights[eligible] / weights[eligible].sum()
            chosen = [eligible[rng.choice(len(eligible), p=p)]]
        for k in chosen:
            members[k].add(pid)
    return [
        SiteSpec(m if sites_per_modality == 1 else f"{m}-{j}", [m], sorted(members[k]))
        for k, (m, j) in enumerate(owners)
    ]


def build_scenario(
    dataset: MultimodalDataset,
    layout: str = "modality-sites",
    *,
    paired_sites: int = 1,
    paired_fraction: float = 0.3,
    overlap: float = 0.0,
    missing_rate: float = 0.0,
    imbalance: float = 0.0,
    sites_per_modality: int = 1,
    seed: int = 0,
) -> Scenario:
    """Turn a data set into sites.

    Layouts:
      - ``"modality-sites"``: ``sites_per_modality`` unimodal site(s) per modality (named after
        the modality, or ``<modality>-<j>``) plus ``paired_sites`` sites (``paired-<j>``)
        holding all modalities for a random ``paired_fraction`` of the patients.
      - ``"pooled"``: a single site with every patient and modality (centralised reference);
        the knobs below are ignored.

    Knobs (``modality-sites``):
      - ``paired_fraction`` in [0, 1]: share of patients at the paired sites (split evenly
        among them); these patients are not at unimodal sites. 0 or ``paired_sites=0``: none.
      - ``overlap`` in [0, 1]: share of the other patients seen by every unimodal site holding
        their data (0 = unimodal sites have disjoint patients; 1 = each unimodal site sees all
        non-paired patients that have its modality).
      - ``imbalance`` in [0, 1): skew of non-shared patients across unimodal sites; site weights
        range from 1 to ``1 - imbalance`` (0 = equal expected counts).
      - ``missing_rate`` in [0, 1]: share of paired-site patients lacking one random modality
        there (on top of the data set's own missingness).
    Unimodal sites only list patients that have the site's modality. Seeded by ``seed``.
    """
    _check_knobs(layout, paired_fraction, overlap, missing_rate, imbalance)
    if paired_sites < 0 or sites_per_modality < 1:
        raise ValueError("need paired_sites >= 0 and sites_per_modality >= 1")
    ids = dataset.patient_ids()
    if layout == "pooled":
        return Scenario("pooled", [SiteSpec("pooled", list(dataset.modalities), ids)])
    rng = np.random.default_rng(seed)
    permuted = [ids[i] for i in rng.permutation(len(ids))]
    n_paired = round(paired_fraction * len(ids)) if paired_sites > 0 else 0
    sites = _unimodal_sites(dataset, sorted(permuted[n_paired:]), sites_per_modality, overlap, imbalance, rng)
    if n_paired:
        sites += _paired_sites(dataset, sorted(permuted[:n_paired]), paired_sites, missing_rate, rng)
    settings = {
        "layout": layout,
        "paired_sites": paired_sites,
        "paired_fraction": paired_fraction,
        "overlap": overlap,
        "missing_rate": missing_rate,
        "imbalance": imbalance,
        "sites_per_modality": sites_per_modality,
        "seed": seed,
    }
    return Scenario(f"{dataset.name}:{layout}", sites, settings)


def _site_modality(data: ModalityData, site: SiteSpec) -> ModalityData:
    keep = set(site.patient_ids) - set(site.withheld.get(data.name, []))
    return data.subset(keep)


def site_dataset(dataset: MultimodalDataset, site: SiteSpec) -> MultimodalDataset:
    """The data one site holds: its patients, its modalities, minus withheld entries."""
    local = dataset.subset(site.patient_ids, modalities=site.modalities)
    local.modalities = {n: _site_modality(d, site) for n, d in local.modalities.items()}
    return local


def site_split(site: SiteSpec, dataset: MultimodalDataset, split: FoldSplit) -> dict[str, list[str]]:
    """The site's patients (holding at least one of its modalities) in each role of ``split``."""
    present = set(site_dataset(dataset, site).patient_ids())
    return {
        "train": [i for i in split.train if i in present],
        "validation": [i for i in split.validation if i in present],
        "test": [i for i in split.test if i in present],
    }


def describe_scenario(scenario: Scenario, dataset: MultimodalDataset | None = None) -> list[dict[str, Any]]:
    """Per-site summary without ids: modalities and patient counts.

    With ``dataset``, also the number of the site's patients that actually hold each modality.
    """
    rows = []
    for site in scenario.sites:
        row: dict[str, Any] = {
            "site": site.name,
            "modalities": list(site.modalities),
            "n_patients": len(site.patient_ids),
            "n_withheld": sum(len(v) for v in site.withheld.values()),
        }
        if dataset is not None:
            local = site_dataset(dataset, site)
            row["per_modality"] = {n: len(d.patient_ids()) for n, d in local.modalities.items()}
        rows.append(row)
    return rows
