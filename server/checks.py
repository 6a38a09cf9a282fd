"""The coordinator's checks, without any transport: agree on the task, check and choose block
packages, aggregate per-site metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedlego.common.aggregation import weighted_mean
from fedlego.common.concordance import PAIR_COUNT_KEYS, PAIR_SUM_KEYS, PairCounts
from fedlego.common.encoders import DEFAULT_MAX_ENCODER_PARAMETERS
from fedlego.common.lego import LatentContract, LegoBlock
from fedlego.common.packaging import PackageError, check_block_package
from fedlego.common.protocol import SiteDescription
from fedlego.common.signing import verify_signature
from fedlego.common.tasks import ClassificationTask, SurvivalTask, Task
from fedlego.proto.fedlego_pb2 import BlockPackage
from fedlego.server.results import ModelMetrics, Refusal, SiteMetric


def agree_task(descriptions: Sequence[SiteDescription], note: Callable[[str], None] | None = None) -> Task:
    """The run's task from the sites' descriptions: survival time bins are the event-weighted
    mean of the sites' own training quantiles (aggregates only; no site shares its times). A site
    whose tied times collapsed some quantiles reports fewer cut points: the bins come from the
    sites with the full count, and that site (told about it through ``note``) trains on the
    common bins like every other, since the task travels in every request."""
    kinds = {d.task for d in descriptions}
    if len(kinds) != 1:
        raise ValueError(f"sites disagree on the task: {sorted(kinds)}")
    kind = kinds.pop()
    if kind != "survival":
        return ClassificationTask(max(int(d.n_classes) for d in descriptions))
    # in site order, so that the float sums do not depend on the order replies arrived in
    with_bins = sorted((d for d in descriptions if d.cut_points), key=lambda d: d.site)
    if not with_bins:
        raise ValueError(
            "no site reported survival time quantiles: a site sends them only with at least min-cell "
            "training events (disclosure control), and none has that many"
        )
    full = max(len(d.cut_points or []) for d in with_bins)
    collapsed = [d.site for d in with_bins if len(d.cut_points or []) < full]
    if collapsed and note is not None:
        note(
            f"{', '.join(collapsed)} reported fewer than {full} time-bin cut points (tied training times): "
            "the common bins come from the other sites"
        )
    with_bins = [d for d in with_bins if len(d.cut_points or []) == full]
    weights = np.array([max(d.n_train_events or 0, 1) for d in with_bins], dtype=float)
    cuts = np.array([d.cut_points for d in with_bins], dtype=float)
    mean_cuts = tuple(float(c) for c in np.sort((weights[:, None] * cuts).sum(0) / weights.sum()))
    return SurvivalTask(mean_cuts, time_unit=_time_unit(descriptions))


def _time_unit(descriptions: Sequence[SiteDescription]) -> str | None:
    """The survival time unit the sites state (None when none does); sites stating different
    units are an error: their times cannot share bins."""
    units = {d.site: d.time_unit for d in descriptions if d.time_unit is not None}
    if len(set(units.values())) > 1:
        stated = ", ".join(f"{site}: {unit}" for site, unit in sorted(units.items()))
        raise ValueError(f"sites state different survival time units ({stated}); convert the times to one unit")
    return next(iter(units.values()), None)


@dataclass
class PackageSelection:
    """Checked blocks per modality (all candidates, largest cohort first) and the refusals."""

    candidates: dict[str, list[tuple[BlockPackage, LegoBlock]]] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)


def check_packages(
    packages: Sequence[BlockPackage],
    contract: LatentContract,
    task: Task,
    max_bytes: int,
    run_id: str,
    trusted: Mapping[str, Ed25519PublicKey] | None = None,
    max_encoder_parameters: int = DEFAULT_MAX_ENCODER_PARAMETERS,
    max_weight_ratio: float = 0.0,
) -> PackageSelection:
    """Check every uploaded package; valid ones grouped by modality, the rest refused with a reason.

    With ``trusted`` signers, every package must carry a valid signature of the site it names.
    No exception escapes: one raised while checking a package refuses that package, with its reason."""
    selection = PackageSelection()
    for package in packages:
        try:
            if trusted is not None:
                verify_signature(package, trusted, run_id, expected_signer=package.site)
            if package.run_id != run_id:
                raise PackageError(f"package belongs to run {package.run_id!r}, not this run {run_id!r}")
            block = check_block_package(package, contract, task, max_bytes, max_encoder_parameters, max_weight_ratio)
        except PackageError as error:
            selection.refused.append(Refusal(package.site, package.modality, str(error)))
            continue
        except Exception as error:  # a check that crashes on one package refuses that package only
            reason = f"the package could not be checked ({type(error).__name__}: {error})"
            selection.refused.append(Refusal(package.site, package.modality, reason))
            continue
        selection.candidates.setdefault(package.modality, []).append((package, block))
    for candidates in selection.candidates.values():
        candidates.sort(key=lambda pair: (-pair[0].n_samples, pair[0].site))
    return selection


def aggregate_metrics(per_site: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, ModelMetrics]:
    """Per model: each site's metric and n, the sample-weighted mean over sites, and the pooled
    metric from the pair counts the sites report (pairs are only formed within a site), with its
    95 % jackknife interval when every site holding pairs reported the per-patient sums."""
    models: dict[str, ModelMetrics] = {}
    pooled: dict[str, PairCounts] = {}
    spread_reported: dict[str, bool] = {}
    for site, results in per_site.items():
        for model, values in results.items():
            entry = models.setdefault(model, ModelMetrics())
            entry.per_site[site] = SiteMetric(float(values["metric"]), int(values["n"]))
            counts = PairCounts(
                *(int(values.get(k, 0)) for k in PAIR_COUNT_KEYS), *(float(values.get(k, 0.0)) for k in PAIR_SUM_KEYS)
            )
            pooled[model] = pooled.get(model, PairCounts()) + counts
            reported = all(k in values for k in PAIR_SUM_KEYS) or counts.pairs == 0
            spread_reported[model] = spread_reported.get(model, True) and reported
    for model, entry in models.items():
        sites = entry.per_site.values()
        entry.weighted_mean = weighted_mean([s.metric for s in sites], [s.n for s in sites])
        entry.n = sum(s.n for s in sites)
        entry.pooled, entry.pairs = pooled[model].metric, pooled[model].pairs
        interval = pooled[model].interval() if spread_reported[model] else None
        if interval is not None:
            entry.pooled_low, entry.pooled_high = interval
    return models


def undeclared(description: SiteDescription, modality: str, package: BlockPackage) -> str | None:
    """Why an uploaded block does not match what its site described (None when it does): a site
    uploads only modalities it described, under its own name, trained on as many patients as it
    said it holds for training (the count weighs block selection and sample-weighted merges)."""
    if modality not in description.modalities:
        return f"modality {modality!r} was not described by the site (it described {description.modalities})"
    if package.modality != modality:
        return f"package for modality {package.modality!r} uploaded as {modality!r}"
    if package.site != description.site:
        return f"package names site {package.site!r}, uploaded by {description.site!r}"
    declared = description.n_train[description.modalities.index(modality)]
    if package.n_samples != declared:
        return f"n_samples {package.n_samples} differs from the {declared} training patients the site described"
    return None
