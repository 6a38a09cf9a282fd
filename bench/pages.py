"""Markdown of the quality section: the poster's table and the ablation tables."""

from __future__ import annotations

import math
from typing import Any

from scipy import stats

from fedlego.common.centralized import best_block_mean, uplift
from fedlego_bench.quality import HIDDEN_SHARE

BASELINE_NAMES = {
    "cox-early": "Cox early fusion (wide modalities as PCA-10)",
    "cox-late": "Cox late fusion (mean of rank risks)",
    "early-fusion": "Early fusion (concatenated features, SNN)",
    "late-fusion": "Late fusion (encoders + heads, mean of logits)",
    "plain-late": "Late fusion of the separately trained encoders + heads (no paired data)",
    "attention-fusion": "Attention fusion (HEALNet/Perceiver-like)",
    "fedavg-early-fusion": "FedAvg early fusion (paired sites)",
}
LEGO_ROWS = {"ensemble": "Ensemble (mean prediction)", "merge": "LegoMerge", "fuse": "LegoFuse (2 epochs)"}


def cell(value: dict[str, float] | None, folds: int | None = None) -> str:
    """``mean ± std`` of a summary entry, ``—`` when absent; ``(k folds)`` when NaN folds were left out."""
    if not value or value.get("mean") is None or math.isnan(value["mean"]):
        return "—"
    std = value.get("std", float("nan"))
    text = f"{value['mean']:.3f} ± {std:.3f}" if not math.isnan(std) else f"{value['mean']:.3f}"
    if folds is not None and value.get("n_folds", folds) < folds:
        text += f" ({value['n_folds']} of {folds} folds)"
    return text


def uplift_text(summary: dict[str, dict[str, float]], model: str) -> str:
    """Relative gain of a model's mean over the best block's, as text."""
    return f"{uplift(summary, model):+.1f}%"


def _row(label: str, cells: list[str]) -> str:
    return "| " + " | ".join([label, *cells]) + " |"


def _header(first: str, columns: list[str]) -> list[str]:
    return [_row(first, columns), "|" + "---|" * (len(columns) + 1)]


def poster_table(quality: dict[str, Any], federated: dict[str, dict[str, dict[str, float]]] | None = None) -> list[str]:
    """Rows = models, columns = data sets, like the poster. ``federated``: optional per data set
    ``{"merge": summary, "fuse": summary}`` of the simulated federation."""
    names = list(quality)
    columns = [
        f"{n} ({quality[n]['dataset']['task']}, {quality[n]['metric']}, {quality[n]['dataset']['n_complete']} paired)"
        for n in names
    ]
    summaries = {n: quality[n]["summary"]["models"] for n in names}
    folds = {n: quality[n]["settings"]["folds"] for n in names}
    lines = _header("model", columns)
    blocks = []
    for n in names:
        blocks += [k for k in summaries[n] if k.startswith("block:") and k not in blocks]
    for key in blocks:
        lines.append(_row(f"LegoBlock: {key.split(':', 1)[1]}", [cell(summaries[n].get(key), folds[n]) for n in names]))
        plain = "plain:" + key.split(":", 1)[1]
        label = f"encoder + linear head: {key.split(':', 1)[1]} (trained as the block)"
        lines.append(_row(label, [cell(summaries[n].get(plain), folds[n]) for n in names]))
    for key, label in LEGO_ROWS.items():
        lines.append(_row(label, [cell(summaries[n].get(key), folds[n]) for n in names]))
        if key in ("merge", "fuse"):
            lines.append(_row(f"Uplift ({key} vs best block)", [uplift_text(summaries[n], key) for n in names]))
    if federated:
        for key in ("merge", "fuse"):
            label = f"{LEGO_ROWS[key]}, federated (simulated sites)"
            lines.append(_row(label, [cell(federated.get(n, {}).get(key)) for n in names]))
    for key, label in BASELINE_NAMES.items():
        lines.append(_row(label, [cell(summaries[n].get(key), folds[n]) for n in names]))
    if any("oracle" in summaries[n] for n in names):
        label = "oracle: the generator's Bayes-optimal score (the ceiling; synthetic only)"
        lines.append(_row(label, [cell(summaries[n].get("oracle"), folds[n]) for n in names]))
    return lines


def targets(quality: dict[str, Any]) -> list[str]:
    """Whether merge beats the best block and fuse beats merge, per data set (means over folds)."""
    lines = []
    for name, doc in quality.items():
        summary = doc["summary"]["models"]
        best, merge, fuse = best_block_mean(summary), summary["merge"]["mean"], summary["fuse"]["mean"]
        candidates = [
            k
            for k in summary
            if not k.startswith(("block:", "plain:")) and k != "oracle" and not math.isnan(summary[k]["mean"])
        ]
        strongest = max(candidates, key=lambda k: summary[k]["mean"])
        lines.append(
            f"- {name}: LegoMerge ≥ best block: {'met' if merge >= best else 'MISSED'} ({merge:.3f} vs {best:.3f}); "
            f"LegoFuse ≥ LegoMerge: {'met' if fuse >= merge else 'MISSED'} ({fuse:.3f} vs {merge:.3f}); "
            f"highest mean of all multimodal models: {strongest} ({summary[strongest]['mean']:.3f})."
        )
    return lines


def frequency_table(quality: dict[str, Any]) -> list[str]:
    """Frequency- vs spatial-domain blocks, merge and fuse."""
    lines = _header("data set", ["merge, frequency", "merge, spatial", "fuse, frequency", "fuse, spatial"])
    for name, doc in quality.items():
        models, spatial = doc["summary"]["models"], doc["summary"]["spatial"]
        cells = [cell(models["merge"]), cell(spatial["merge"]), cell(models["fuse"]), cell(spatial["fuse"])]
        lines.append(_row(name, cells))
    return lines


def merge_methods_table(quality: dict[str, Any]) -> list[str]:
    """LegoMerge with every latent and head merge method, on the same blocks."""
    names = list(quality)
    first = quality[names[0]]["summary"]["merge_methods"]
    lines = _header("latent merge + head merge", names)
    for latent in first:
        for head in first[latent]:
            values = [cell(quality[n]["summary"]["merge_methods"][latent][head]) for n in names]
            lines.append(_row(f"{latent} + {head}", values))
    return lines


def weighting_table(quality: dict[str, Any]) -> list[str]:
    """LegoMerge of the same blocks with each block-weighting scheme."""
    names = list(quality)
    schemes = quality[names[0]]["summary"]["merge_weighting"]
    lines = _header("block weights", names)
    for scheme in schemes:
        lines.append(_row(scheme, [cell(quality[n]["summary"]["merge_weighting"][scheme]) for n in names]))
    return lines


def fuse_modes_table(quality: dict[str, Any]) -> list[str]:
    """LegoFuse in each topology on the same blocks, with the share of folds whose fine-tuned model
    was kept (the rest kept the untrained model: in merge mode, the merge itself)."""
    names = list(quality)
    modes = quality[names[0]]["summary"]["fuse_modes"]
    lines = _header("fuse topology (share of folds fine-tuned)", names)
    for mode in modes:
        cells = []
        for n in names:
            entry = quality[n]["summary"]["fuse_modes"][mode]
            cells.append(f"{cell(entry['metric'])} ({entry['fine_tuned']['mean']:.0%})")
        lines.append(_row(mode, cells))
    return lines


def disjoint_paired_table(quality: dict[str, Any]) -> list[str]:
    """Fusion on paired patients that trained no block: best block, merge and fuse per topology."""
    names = list(quality)
    rows = quality[names[0]]["summary"]["disjoint_paired"]
    lines = _header("model (paired hospital trained no block)", names)
    for row in rows:
        if row.startswith("fine-tuned") or row == "hospital patients":
            continue
        cells = []
        for n in names:
            entry = quality[n]["summary"]["disjoint_paired"]
            mode = row[len("fuse (") : -1] if row.startswith("fuse (") else None
            text = cell(entry[row])
            if mode is not None:
                text += f" ({entry[f'fine-tuned ({mode})']['mean']:.0%} fine-tuned)"
            cells.append(text)
        lines.append(_row(row, cells))
    sizes = [f"{quality[n]['summary']['disjoint_paired']['hospital patients']['mean']:.0f}" for n in names]
    lines.append(_row("paired hospital's patients (mean)", sizes))
    return lines


PAIRED_DIFFERENCES = (
    ("LegoFuse - LegoMerge", "fuse", "merge"),
    ("LegoMerge - ensemble of the blocks", "merge", "ensemble"),
    ("LegoMerge - late fusion of separately trained encoders + heads", "merge", "plain-late"),
    ("LegoMerge - Cox late fusion", "merge", "cox-late"),
    ("LegoMerge - Cox early fusion", "merge", "cox-early"),
    ("LegoMerge - early fusion (SNN)", "merge", "early-fusion"),
)


def _difference(values: list[float]) -> str:
    """Mean paired difference over folds with a 95 % t-interval."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return "—"
    mean = sum(finite) / len(finite)
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
    half = stats.t.ppf(0.975, len(finite) - 1) * sd / math.sqrt(len(finite))
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


def paired_differences_table(quality: dict[str, Any]) -> list[str]:
    """Per data set, paired per-fold differences of the test metric with 95 % t-intervals: the
    method's comparisons, each LegoBlock against its plain encoder + head, and fuse against merge
    in the disjoint-paired scenario."""
    names = list(quality)
    lines = _header("paired difference (mean [95 % t-interval] over folds)", names)

    def per_fold(name: str, first: str, second: str, key: str = "models") -> list[float]:
        folds = quality[name]["folds"]
        return [f[key].get(first, math.nan) - f[key].get(second, math.nan) for f in folds if key in f]

    for label, first, second in PAIRED_DIFFERENCES:
        lines.append(_row(label, [_difference(per_fold(n, first, second)) for n in names]))
    if all("disjoint_paired" in quality[n]["folds"][0] for n in names):
        cells = [_difference(per_fold(n, "fuse (merge)", "merge", "disjoint_paired")) for n in names]
        lines.append(_row("disjoint paired: LegoFuse - LegoMerge", cells))
    modalities = []
    for n in names:
        modalities += [k.split(":", 1)[1] for k in quality[n]["folds"][0]["models"] if k.startswith("block:")]
    for m in dict.fromkeys(modalities):
        cells = [
            _difference(per_fold(n, f"block:{m}", f"plain:{m}"))
            if f"block:{m}" in quality[n]["folds"][0]["models"]
            else ""
            for n in names
        ]
        lines.append(_row(f"LegoBlock - encoder + linear head: {m}", cells))
    return lines


def missing_tables(quality: dict[str, Any]) -> list[str]:
    """Per data set: each model's metric for each share of modalities hidden at test time."""
    lines = []
    for name, doc in quality.items():
        curves = doc["summary"]["missing_at_test"]
        rates = list(curves)
        lines += [
            f"**{name}** ({doc['metric']})",
            "",
            *_header("model", [f"p = {r}" for r in rates]),
        ]
        for model in curves[rates[0]]:
            if model == HIDDEN_SHARE:
                lines.append(_row(f"*{model}*", [f"{100 * curves[r][model]['mean']:.0f}%" for r in rates]))
            else:
                lines.append(_row(model, [cell(curves[r][model]) for r in rates]))
        lines.append("")
    return lines


def site_ablation_tables(quality: dict[str, Any], key: str) -> list[str]:
    """Per data set: blocks trained at unimodal sites with a given overlap or imbalance, merged."""
    lines = []
    for name, doc in quality.items():
        if key not in doc["summary"]:
            continue
        levels = doc["summary"][key]
        first = levels[next(iter(levels))]
        sizes = [k for k in first if k.startswith("n_train:")]
        columns = [f"training patients {k.split(':', 1)[1]}" for k in sizes] + [
            "best block",
            "ensemble",
            "merge (uniform)",
            "merge (by samples)",
        ]
        lines += [f"**{name}** ({doc['metric']})", "", *_header(key, columns)]
        for level, values in levels.items():
            blocks = [v for k, v in values.items() if k.startswith("block:") and not math.isnan(v["mean"])]
            best = max(blocks, key=lambda v: v["mean"]) if blocks else None
            cells = [f"{values[k]['mean']:.0f}" for k in sizes]
            cells += [
                cell(best),
                cell(values["ensemble"]),
                cell(values["merge:uniform"]),
                cell(values["merge:samples"]),
            ]
            lines.append(_row(level, cells))
        lines.append("")
    return lines
