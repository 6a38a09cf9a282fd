"""The coordinator's science, without any transport: agree on the task, check and choose block
packages, average weights, aggregate per-site metrics, and print the run's table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedlego.common.aggregation import weighted_mean
from fedlego.common.lego import LatentContract, LegoBlock
from fedlego.common.packaging import PackageError, check_block_package
from fedlego.common.signing import verify_signature
from fedlego.common.tasks import ClassificationTask, SurvivalTask, Task
from fedlego.proto.fedlego_pb2 import BlockPackage


def agree_task(descriptions: Sequence[Mapping[str, Any]]) -> Task:
    """The run's task from the sites' descriptions: survival time bins are the event-weighted
    mean of the sites' own training quantiles (aggregates only; no site shares its times)."""
    kinds = {d["task"] for d in descriptions}
    if len(kinds) != 1:
        raise ValueError(f"sites disagree on the task: {sorted(kinds)}")
    kind = kinds.pop()
    if kind != "survival":
        return ClassificationTask(max(int(d["n_classes"]) for d in descriptions))
    with_bins = [d for d in descriptions if d.get("cut_points")]
    if not with_bins:
        raise ValueError("no site reported survival time quantiles (no training patients?)")
    lengths = {len(d["cut_points"]) for d in with_bins}
    if len(lengths) != 1:
        raise ValueError(f"sites report different numbers of time bins: {sorted(lengths)}")
    weights = np.array([max(d.get("n_train_events", 0), 1) for d in with_bins], dtype=float)
    cuts = np.array([d["cut_points"] for d in with_bins], dtype=float)
    return SurvivalTask(tuple(float(c) for c in np.sort((weights[:, None] * cuts).sum(0) / weights.sum())))


@dataclass
class Refusal:
    """A package left out of the merge, and why."""

    site: str
    modality: str
    reason: str


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
) -> PackageSelection:
    """Check every uploaded package; valid ones grouped by modality, the rest refused with a reason.

    With ``trusted`` signers, every package must carry a valid signature of the site it names."""
    selection = PackageSelection()
    for package in packages:
        try:
            if trusted is not None:
                verify_signature(package, trusted, run_id, expected_signer=package.site)
            if package.run_id != run_id:
                raise PackageError(f"package belongs to run {package.run_id!r}, not this run {run_id!r}")
            block = check_block_package(package, contract, task, max_bytes)
        except PackageError as error:
            selection.refused.append(Refusal(package.site, package.modality, str(error)))
            continue
        selection.candidates.setdefault(package.modality, []).append((package, block))
    for candidates in selection.candidates.values():
        candidates.sort(key=lambda pair: (-pair[0].n_samples, pair[0].site))
    return selection


def aggregate_metrics(per_site: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per model: each site's metric and n, and the sample-weighted mean over sites."""
    models: dict[str, dict[str, Any]] = {}
    for site, results in per_site.items():
        for model, values in results.items():
            entry = models.setdefault(model, {"per_site": {}})
            entry["per_site"][site] = {"metric": float(values["metric"]), "n": int(values["n"])}
    for entry in models.values():
        sites = entry["per_site"].values()
        entry["weighted_mean"] = weighted_mean([s["metric"] for s in sites], [s["n"] for s in sites])
        entry["n"] = sum(s["n"] for s in sites)
    return models


def format_federation_table(results: Mapping[str, Any]) -> str:
    """Per phase and model: sample-weighted mean metric over sites, with each site's value."""
    metric = results.get("metric", "metric")
    lines = [f"{'phase':<8} {'model':<18} {metric + ' (weighted)':>20}  n   per site"]
    for phase, models in results.get("metrics", {}).items():
        for model, entry in models.items():
            mean = entry["weighted_mean"]
            shown = "n/a" if math.isnan(mean) else f"{mean:.3f}"
            per_site = ", ".join(
                f"{site} {v['metric']:.3f} (n={v['n']})" if not math.isnan(v["metric"]) else f"{site} n/a (n={v['n']})"
                for site, v in entry["per_site"].items()
            )
            lines.append(f"{phase:<8} {model:<18} {shown:>20}  {entry['n']:<3} {per_site}")
    for refusal in results.get("refused", []):
        lines.append(f"refused: {refusal['site']}/{refusal['modality']}: {refusal['reason']}")
    for failure in results.get("failures", []):
        lines.append(f"failed: {failure['site']} in {failure['phase']}: {failure['reason']}")
    return "\n".join(lines)
