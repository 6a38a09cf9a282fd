"""The page of ``bench/splits.py``: per cohort and split, each strategy's federated - centralized
c-index on the same test patients (mean over seeds with a t-interval), the seed-to-seed sd of the
mean-over-sites c-index, and the pooled validation loss the strategy would be chosen on."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats


def _interval(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    mean = float(np.mean(finite))
    if len(finite) < 2:
        return f"{mean:+.3f}"
    half = float(stats.t.ppf(0.975, len(finite) - 1) * np.std(finite, ddof=1) / math.sqrt(len(finite)))
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "rendered from the jobs a cut-short run finished: `--render`; seeds and cohorts as listed"
    return f"{seconds / 60:.0f} min on this machine's 2 cores"


def _mean_over_sites(outcome: dict[str, Any]) -> float:
    values = [v for v in outcome.get("sites", {}).values() if math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _sd(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")


def centralized_sd(summary: dict[str, Any]) -> dict[tuple[str, str], float]:
    """Per cohort and split, the sd over seeds of the centralized model's mean over the split's
    sites of each site's test c-index (records that hold it: ``centralized_sites``)."""
    values: dict[tuple[str, str], list[float]] = {}
    for record in summary["records"]:
        for split, entry in record["splits"].items():
            if "centralized_sites" in entry:
                values.setdefault((record["cohort"], split), []).append(
                    _mean_over_sites({"sites": entry["centralized_sites"]})
                )
    return {key: _sd(v) for key, v in values.items()}


def rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per cohort, split and strategy, with the figures of the page."""
    table: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    central_sd = centralized_sd(summary)
    for record in summary["records"]:
        reference = record["centralized"]["test"]
        for split, entry in record["splits"].items():
            for strategy, outcome in entry["strategies"].items():
                if strategy not in summary["strategies"]:  # --render of a subset
                    continue
                cell = table.setdefault(
                    (record["cohort"], split, strategy), {"diff": [], "sites": [], "loss": [], "validation": []}
                )
                if "test" not in outcome:
                    continue
                cell["diff"].append(outcome["test"] - reference)
                cell["validation"].append(float(outcome.get("validation", float("nan"))))
                cell["sites"].append(_mean_over_sites(outcome))
                loss = outcome.get("validation_loss")
                cell["loss"].append(float("nan") if loss is None else float(loss))
    out = []
    for (cohort, split, strategy), cell in table.items():
        losses = [v for v in cell["loss"] if math.isfinite(v)]
        out.append(
            {
                "cohort": cohort,
                "split": split,
                "strategy": strategy,
                "difference": cell["diff"],
                "sites_sd": _sd(cell["sites"]),
                "centralized_sites_sd": central_sd.get((cohort, split), float("nan")),
                "validation_loss": float(np.mean(losses)) if losses else float("nan"),
                "validation": cell["validation"],
                "runs": len(cell["diff"]),
            }
        )
    return out


def write_splits_page(summary: dict[str, Any], path: Path, command: str) -> None:
    """Write the markdown page."""
    table = rows(summary)
    strategies = list(summary["strategies"])
    lines = [
        "# Realistic hospital splits: federated against centralized training",
        "",
        f"Command: `{command}` ({_duration(summary['wall_seconds'])}).",
        "",
        "Each panel cohort is cut into sites by a real covariate (`natural`: Flower Datasets'",
        "NaturalIdPartitioner) or by a Dirichlet skew of the outcome (`dirichlet`,",
        f"DirichletPartitioner, alpha 0.5, {_draws(summary)}). Every site holds every modality of its",
        "patients. Federated models are scored on the union of the sites' test patients, the same",
        "patients as the centralized model trained on the pooled training patients; c-index from",
        "scikit-survival. Differences are federated - centralized, paired by seed, mean over seeds",
        "[t 95 %]. `sites sd` is the sd over seeds of the mean over sites of each site's own test",
        "c-index (`centr.`: the centralized model's on the same sites' test patients).",
        "`val. loss` is the pooled validation loss of the kept model (what a default is chosen on;",
        "n/a: no site could report one under the disclosure threshold).",
        "",
        "| cohort | split | strategy | federated - centralized | sites sd | centr. sites sd | val. loss | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(table, key=lambda r: (r["cohort"], r["split"], strategies.index(r["strategy"]))):
        loss = f"{row['validation_loss']:.4f}" if math.isfinite(row["validation_loss"]) else "n/a"
        sd, central = (
            f"{row[k]:.3f}" if math.isfinite(row[k]) else "n/a" for k in ("sites_sd", "centralized_sites_sd")
        )
        lines.append(
            f"| {row['cohort']} | {row['split']} | {row['strategy']} | {_interval(row['difference'])} "
            f"| {sd} | {central} | {loss} | {row['runs']} |"
        )
    lines += ["", "## Over every cohort and split", ""]
    lines += [
        "| strategy | validation c-index (mean) | federated - centralized (test, every run) "
        "| random-effects mean over cohort-splits | runs |",
        "|---|---|---|---|---|",
    ]
    chosen, best = None, -math.inf
    for strategy in strategies:
        values = [v for r in table if r["strategy"] == strategy for v in r["difference"]]
        valid = [v for r in table if r["strategy"] == strategy for v in r["validation"] if math.isfinite(v)]
        mean_valid = float(np.mean(valid)) if valid else float("nan")
        if math.isfinite(mean_valid) and mean_valid > best:
            chosen, best = strategy, mean_valid
        lines.append(
            f"| {strategy} | {mean_valid:.3f} | {_interval(values)} "
            f"| {_meta([r['difference'] for r in table if r['strategy'] == strategy])} | {len(values)} |"
        )
    lines += ["", f"Highest mean c-index on the validation patients: **{chosen}**.", ""]
    if len(strategies) > 1:
        lines += _against_first(summary, table, strategies)
    if "before" in summary:
        lines += _against_before(summary["before"])
    path.write_text("\n".join(lines))


def _against_before(before: dict[str, Any]) -> list[str]:
    """Each strategy against its own runs by earlier code (``splits.changes``)."""
    lines = [
        f"## Against the same strategies in `{before['name']}-records.jsonl`",
        "",
        "Earlier code on the same cohorts, splits and seeds; now - then, paired by cohort, split and seed.",
        "",
        "| strategy | validation c-index change | test c-index change | pairs |",
        "|---|---|---|---|",
    ]
    for strategy, change in before["differences"].items():
        validation, test = _interval(change["validation"]), _interval(change["test"])
        lines.append(f"| {strategy} | {validation} | {test} | {len(change['test'])} |")
    return [*lines, ""]


def fixed_splits(record: dict[str, Any]) -> bool:
    """Whether a record is of the fixed-split protocol (one Dirichlet draw for every seed, the
    centralized spread recorded) rather than the earlier one (a draw per seed)."""
    return all("centralized_sites" in entry for entry in record["splits"].values())


def _draws(summary: dict[str, Any]) -> str:
    """How the Dirichlet splits were drawn (``fixed_splits``)."""
    if all(fixed_splits(record) for record in summary["records"]):
        return "the same draw for every training seed"
    return "one draw per seed"


def _meta(per_split: list[list[float]]) -> str:
    """DerSimonian-Laird random-effects mean of per cohort-split means, each with its variance over
    seeds (s^2 / n); a split whose seeds all gave the same difference (no variance) is counted apart."""
    from fedlego_bench.meta import dersimonian_laird

    means, variances, flat = [], [], 0
    for values in per_split:
        finite = [v for v in values if math.isfinite(v)]
        if len(finite) < 2:
            continue
        variance = float(np.var(finite, ddof=1) / len(finite))
        if variance > 0:
            means.append(float(np.mean(finite)))
            variances.append(variance)
        else:
            flat += 1
    if not means:
        return "n/a"
    pooled = dersimonian_laird(means, variances)
    left = f"; {flat} without spread left out" if flat else ""
    count = pooled["cohorts"]
    return (
        f"{pooled['mean']:+.3f} [{pooled['low']:+.3f}, {pooled['high']:+.3f}] "
        f"({count} split{'s' if count != 1 else ''}{left})"
    )


def _paired(summary: dict[str, Any], strategy: str, reference: str, key: str) -> list[float]:
    """``strategy`` - ``reference`` on ``key`` (test or validation c-index), one value per cohort,
    split and seed where both ran."""
    out = []
    for record in summary["records"]:
        for entry in record["splits"].values():
            ran = entry["strategies"]
            if key in ran.get(strategy, {}) and key in ran.get(reference, {}):
                out.append(float(ran[strategy][key]) - float(ran[reference][key]))
    return [v for v in out if math.isfinite(v)]


def _against_first(summary: dict[str, Any], table: list[dict[str, Any]], strategies: list[str]) -> list[str]:
    """Each strategy against the first (the defaults before the benchmark), paired by cohort, split
    and seed, and the ratio of the seed-to-seed sd of the mean-over-sites c-index."""
    reference = strategies[0]
    lines = [
        f"## Against `{reference}` (paired by cohort, split and seed)",
        "",
        "| strategy | validation c-index difference | test c-index difference | sites sd / reference's (median) |",
        "|---|---|---|---|",
    ]
    sd = {(r["cohort"], r["split"], r["strategy"]): r["sites_sd"] for r in table}
    for strategy in strategies[1:]:
        ratios = [
            sd[(c, s, strategy)] / sd[(c, s, reference)]
            for (c, s, name) in sd
            if name == reference and (c, s, strategy) in sd and sd[(c, s, reference)] > 0
        ]
        ratios = [r for r in ratios if math.isfinite(r)]
        ratio = f"{float(np.median(ratios)):.2f}" if ratios else "n/a"
        lines.append(
            f"| {strategy} | {_interval(_paired(summary, strategy, reference, 'validation'))} "
            f"| {_interval(_paired(summary, strategy, reference, 'test'))} | {ratio} |"
        )
    return [*lines, ""]
