"""PNG figures of the quality section (matplotlib ``Figure`` objects, no pyplot global state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

LEGO_COLOUR = "#1f77b4"
BLOCK_COLOUR = "#9ecae1"
BASELINE_COLOUR = "#fdae6b"
CURVE_MODELS = ("merge", "fuse", "ensemble", "attention-fusion", "early-fusion", "cox-late")


def _panels(n: int, width: float = 4.6, height: float = 3.6) -> tuple[Figure, list[Any]]:
    figure = Figure(figsize=(width * n, height), layout="constrained")
    axes = figure.subplots(1, n, squeeze=False)[0]
    return figure, list(axes)


def _save(figure: Figure, out_dir: Path, name: str) -> str:
    figure.savefig(out_dir / name, dpi=110)
    return name


def _label(doc: dict[str, Any]) -> str:
    data = doc["dataset"]
    return f"{data['name']} ({data['n_complete']} complete / {data['n_patients']} patients)"


def _colour(model: str) -> str:
    if model.startswith("block:"):
        return BLOCK_COLOUR
    return LEGO_COLOUR if model in ("ensemble", "merge", "fuse") else BASELINE_COLOUR


def table_figure(quality: dict[str, Any], out_dir: Path) -> str:
    """Every model of the table, mean ± std over folds, one panel per data set."""
    figure, axes = _panels(len(quality), 4.6, 5.0)
    for ax, doc in zip(axes, quality.values(), strict=True):
        summary = doc["summary"]["models"]
        names = list(summary)
        means = [summary[n]["mean"] for n in names]
        stds = [np.nan_to_num(summary[n]["std"]) for n in names]
        y = np.arange(len(names))[::-1]
        ax.barh(y, means, xerr=stds, color=[_colour(n) for n in names], capsize=3)
        ax.set_yticks(y, names, fontsize=8)
        ax.axvline(0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlim(min(0.3, np.nanmin(means) - 0.05), 1.0)
        ax.set_xlabel(f"test {doc['metric']} (mean ± std over folds)")
        ax.set_title(_label(doc), fontsize=9)
    return _save(figure, out_dir, "table.png")


def _grouped_bars(ax: Any, groups: list[str], series: dict[str, list[dict[str, float]]], ylabel: str) -> None:
    """One bar per (group, series) with its std as error bar; ``series[label][i]`` belongs to ``groups[i]``."""
    x = np.arange(len(groups))
    width = 0.8 / len(series)
    for j, (label, values) in enumerate(series.items()):
        ax.bar(
            x + (j - (len(series) - 1) / 2) * width,
            [v["mean"] for v in values],
            width,
            yerr=[np.nan_to_num(v["std"]) for v in values],
            label=label,
            capsize=3,
        )
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def frequency_figure(quality: dict[str, Any], out_dir: Path) -> str:
    """Merge and fuse with frequency- vs spatial-domain latent updates."""
    figure, axes = _panels(len(quality))
    for ax, doc in zip(axes, quality.values(), strict=True):
        groups = ["merge", "fuse"]
        series = {
            "frequency": [doc["summary"]["models"][g] for g in groups],
            "spatial": [doc["summary"]["spatial"][g] for g in groups],
        }
        _grouped_bars(ax, groups, series, f"test {doc['metric']}")
        ax.set_title(_label(doc), fontsize=9)
    return _save(figure, out_dir, "frequency-vs-spatial.png")


def merge_methods_figure(quality: dict[str, Any], out_dir: Path) -> str:
    """Latent merge method (x) by head merge method (bars)."""
    figure, axes = _panels(len(quality))
    for ax, doc in zip(axes, quality.values(), strict=True):
        methods = doc["summary"]["merge_methods"]
        latents = list(methods)
        series = {f"head: {head}": [methods[latent][head] for latent in latents] for head in methods[latents[0]]}
        _grouped_bars(ax, [f"latent: {latent}" for latent in latents], series, f"LegoMerge test {doc['metric']}")
        ax.set_title(_label(doc), fontsize=9)
    return _save(figure, out_dir, "merge-methods.png")


def missing_figure(quality: dict[str, Any], out_dir: Path) -> str:
    """Metric against the share of modalities hidden at test time."""
    figure, axes = _panels(len(quality))
    for ax, doc in zip(axes, quality.values(), strict=True):
        curves = doc["summary"]["missing_at_test"]
        rates = list(curves)
        for model in CURVE_MODELS:
            if model in curves[rates[0]]:
                ax.plot(
                    [100 * float(r) for r in rates],
                    [curves[r][model]["mean"] for r in rates],
                    marker="o",
                    label=model,
                    linewidth=2.2 if model in ("merge", "fuse") else 1.2,
                )
        ax.set_xlabel("probability of hiding each modality of a test patient (%)")
        ax.set_ylabel(f"test {doc['metric']} (mean over folds)")
        ax.set_title(_label(doc), fontsize=9)
        ax.legend(fontsize=7)
    return _save(figure, out_dir, "missing-modalities.png")


def site_ablation_figure(quality: dict[str, Any], key: str, xlabel: str, out_dir: Path) -> str | None:
    """Merge (uniform and sample weights), ensemble and the best block against overlap or imbalance."""
    docs = [doc for doc in quality.values() if key in doc["summary"]]
    if not docs:
        return None
    figure, axes = _panels(len(docs))
    for ax, doc in zip(axes, docs, strict=True):
        levels = doc["summary"][key]
        x = [float(level) for level in levels]
        for model in ("merge:uniform", "merge:samples", "ensemble"):
            ax.plot(x, [levels[level][model]["mean"] for level in levels], marker="o", label=model)
        best = [max(v["mean"] for k, v in levels[level].items() if k.startswith("block:")) for level in levels]
        ax.plot(x, best, marker="s", linestyle="--", label="best block")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test {doc['metric']} (mean over folds)")
        ax.set_title(_label(doc), fontsize=9)
        ax.legend(fontsize=8)
    return _save(figure, out_dir, f"{key}.png")


def quality_figures(quality: dict[str, Any], out_dir: Path) -> list[str]:
    """Every quality figure; returns the file names written in ``out_dir``."""
    names = [
        table_figure(quality, out_dir),
        frequency_figure(quality, out_dir),
        merge_methods_figure(quality, out_dir),
        missing_figure(quality, out_dir),
        site_ablation_figure(quality, "overlap", "overlap between unimodal sites' patients", out_dir),
        site_ablation_figure(quality, "imbalance", "imbalance across unimodal sites", out_dir),
    ]
    return [name for name in names if name]
