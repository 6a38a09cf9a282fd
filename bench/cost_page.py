"""Markdown and PNG figures of the cost section (from the document ``cost.run_cost`` returns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


# -- markdown --------------------------------------------------------------------------------
def _na(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB"


def _kib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1024:.1f} KiB"


def _seconds(n: float | None) -> str:
    return "n/a" if n is None else f"{n:.1f} s"


def _pm(stats: dict[str, Any], digits: int = 3) -> str:
    """``mean ± std (n)`` of a _mean_std entry."""
    if stats["mean"] is None:
        return "n/a"
    std = "" if stats["std"] is None else f" ± {stats['std']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}{std}"


def _md_comparison(entry: dict[str, Any]) -> list[str]:
    folds, same = entry["folds"], entry["same_patients"]
    if same["identical"] is None:
        check = f"could not be checked ({same['error']})"
    else:
        check = (
            "identical for every fold"
            if same["identical"]
            else f"NOT identical (per fold: {same['identical_per_fold']})"
        )
    sites = ", ".join(f"{s}: {'+'.join(v['modalities'] or [])}" for s, v in entry["federated_sites"].items())
    failed = [r for r in [*entry["simulate_runs"], entry["centralized_run"]] if r["status"] != "completed"]
    lines = [
        f"### {entry['dataset']} ({entry['metric']}, mean ± std over {len(folds)} fold(s))",
        "",
        f"Federation sites: {sites or 'n/a'}. Patient splits of the federation and the centralized run, "
        f"rebuilt in the benchmark process: {check}; {_md_folds(entry['simulate_runs'])}. "
        + _md_settings(entry["settings"]),
        "",
        "| model | federated (site-weighted mean) | centralized (complete cases) | federated n per fold "
        "| centralized n per fold |",
        "|---|---|---|---|---|",
    ]
    for name, row in entry["models"].items():
        counts = [", ".join(_na(n) for n in row[f"{side}_n_per_fold"]) for side in ("federated", "centralized")]
        lines.append(f"| {name} | {_pm(row['federated'])} | {_pm(row['centralized'])} | {counts[0]} | {counts[1]} |")
    if failed:
        lines += ["", "Not completed: " + "; ".join(f"{r['label']}: {r['status']}" for r in failed) + "."]
    return lines


def _md_folds(records: list[dict[str, Any]]) -> str:
    honoured = [r["fold_honoured"] for r in records if r["fold_honoured"] is not None]
    return f"results.json reports the requested fold in {sum(honoured)} of {len(honoured)} completed federation runs"


def _md_settings(settings: dict[str, dict[str, Any]]) -> str:
    fed, cen = settings["federated"], settings["centralized"]
    if fed.get("block_rounds") is None or cen.get("weighting") is None:
        return ""
    return (
        f"Federated: {fed['weighting']} merge weighting, blocks up to {fed['block_epochs']} local epochs then "
        f"{fed['block_rounds']} FedAvg round(s) x {fed['block_local_epochs']} epochs per shared modality, "
        f"{fed['fuse_rounds']} fuse round(s) x {fed['fuse_local_epochs']} epoch(s). Centralized: "
        f"{cen['weighting']} merge weighting, blocks up to {cen['block_epochs']} epochs, fuse {cen['fuse_epochs']} "
        "epochs."
    )


def _md_federated_vs_centralized(doc: dict) -> list[str]:
    lines = [
        "## Federated vs centralized",
        "",
        "Each fold K is one `fedlego simulate --dataset D --overlap 1 --set fold=K` run (overlap 1: each "
        "unimodal site holds every non-paired patient with its modality; the paired site holds a random 30% "
        "of the patients, with every modality); the "
        "centralized side is one `fedlego centralized --dataset D --folds N` run. Both draw fold K with "
        "`dataset_splits` on the same patients (all patients of the dataset, restricted to its preset "
        "modalities) and the same seed (fold K uses seed 0 + K whatever the number of folds), so train, "
        "validation and test patients of fold K are the same; the check below rebuilds both in-process.",
        "",
        "**The evaluation populations differ.** Federated: each site evaluates on its own test patients "
        "with the modalities it holds (a block on the sites holding its modality, merge and fuse on every "
        "site), and the number is the sample-weighted mean over sites (the `weighted_mean` of results.json); "
        "one patient can be counted at several sites. Centralized: the fold's complete-case test patients "
        "(every modality). Training settings differ too (per dataset below, from each run's results.json). "
        "The numbers are not expected to match.",
        "",
        "![federated vs centralized](cost-federated-vs-centralized.png)",
        "",
    ]
    for entry in doc["federated_vs_centralized"]:
        lines += [*_md_comparison(entry), ""]
    return lines


PHASE_ORDER = ("describe", "block", "block-fedavg", "merge", "evaluate-merge", "fuse", "evaluate-fuse")


def _phase_rank(name: str) -> int:
    """Protocol order of a phase name (``block-fedavg:<modality>`` with ``block-fedavg``)."""
    base = name.split(":", 1)[0]
    return PHASE_ORDER.index(base) if base in PHASE_ORDER else len(PHASE_ORDER)


WALL_ROWS = (
    ("orchestrator, all phases", "orchestrator_wall_seconds"),
    ("`fedlego simulate` command", "simulate_wall_seconds"),
)


def _md_phase_table(timing: dict[str, dict]) -> list[str]:
    datasets = list(timing)
    phases = sorted(dict.fromkeys(p for t in timing.values() for p in t["phase_seconds"]), key=_phase_rank)
    lines = ["| seconds (mean ± std) | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for phase in phases:
        cells = [_pm(timing[d]["phase_seconds"].get(phase, {"mean": None}), 1) for d in datasets]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    for label, key in WALL_ROWS:
        lines.append(f"| {label} | " + " | ".join(_pm(timing[d][key], 1) for d in datasets) + " |")
    cells = [
        f"{_pm({'mean': timing[d]['centralized_wall_seconds'], 'std': None}, 1)} "
        f"(pipeline {_pm({'mean': timing[d]['centralized_pipeline_seconds'], 'std': None}, 1)})"
        for d in datasets
    ]
    return [*lines, "| `fedlego centralized` command, all folds | " + " | ".join(cells) + " |"]


def _md_runs_table(runs: list[dict]) -> list[str]:
    lines = [
        "| run | status | wall time | peak RSS (tree) | processes at peak | load before |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['label']} | {r['status']} | {_seconds(r['wall_seconds'])} | {_mib(r['peak_rss_bytes'])} | "
            f"{_na(r['peak_processes'])} | {r['load_average_1min_before']:.2f} |"
        )
    return lines


def _md_time(doc: dict) -> list[str]:
    return [
        "## Wall time and memory",
        "",
        "Seconds per phase from each federation run's results.json (mean ± std over its completed fold "
        "runs); Ray and the simulated sites start during `describe`. The command's wall time adds the "
        "Python imports, the SuperLink start, `flwr run` and shutdown.",
        "",
        *_md_phase_table(doc["time"]),
        "",
        "Every run, with the peak RSS of its process tree (maximum over 0.25 s polls of the summed RSS of "
        "the command, its descendants and every process carrying the run's private `FLWR_HOME`; shared "
        "pages count once per process, so this overstates physical memory) and the 1-minute load average "
        "before it started:",
        "",
        *_md_runs_table(doc["runs"]),
        "",
    ]


def _md_bytes(doc: dict) -> list[str]:
    data = doc["bytes"]
    lines = ["## Bytes per site per phase (TCGA-ACC, fold 0)", ""]
    if not data["available"]:
        return [*lines, f"No data: the run `{data['run']}` did not complete.", ""]
    sites = list(data["per_site"])
    lines += [
        "Measured from the run's results.json: bytes sent + received per site in each phase (KiB; `-`: the "
        "site took no part). LegoMerge = every phase except `describe` and `evaluate-*`; "
        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in data["rounds"].items())
        + ".",
        "",
        "![bytes per site](cost-bytes.png)",
        "",
        "| phase | " + " | ".join(sites) + " | all sites |",
        "|---|" + "---|" * (len(sites) + 1),
    ]
    for phase in data["phases"]:
        values = [_traffic(data["per_site"][s], phase) for s in sites]
        total = sum(v for v in values if v is not None)
        lines.append(
            f"| {phase} | " + " | ".join(_kib(v) if v is not None else "-" for v in values) + f" | {_kib(total)} |"
        )
    lego = [data["legomerge_bytes_per_site"][s]["total"] for s in sites]
    lines.append(
        "| **LegoMerge total** | " + " | ".join(f"**{_kib(v)}**" for v in lego) + f" | **{_kib(sum(lego))}** |"
    )
    return [*lines, ""]


def _traffic(site: dict[str, dict[str, int]], phase: str) -> int | None:
    return site[phase]["sent"] + site[phase]["received"] if phase in site else None


def _md_scaling_table(rows: list[dict], first: str) -> list[str]:
    lines = [
        f"| {first} | sites (CLI) | layout | status | wall time | orchestrator | peak RSS (tree) "
        "| processes at peak | load before |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        key = r["sites"] if first == "sites" else r["modalities"]
        lines.append(
            f"| {key} | {r['site_count'] if r['site_count'] is not None else 'n/a'} | "
            f"{r['sites_per_modality']}/modality + {r['paired']} paired, {r['modalities']} modalities | "
            f"{r['status']} | {_seconds(r['wall_seconds'])} | {_seconds(r['orchestrator_wall_seconds'])} | "
            f"{_mib(r['peak_rss_bytes'])} | {r['peak_processes'] if r['peak_processes'] is not None else 'n/a'} | "
            f"{r['load_average_1min_before']:.2f} |"
        )
    return lines


def _md_scaling_phases(rows: list[dict], first: str) -> list[str]:
    phases = list(dict.fromkeys(p for r in rows for p in r["phase_seconds"] if not p.startswith("block-fedavg:")))
    lines = [f"| {first} | " + " | ".join(phases) + " | block-fedavg (all) |", "|---|" + "---|" * (len(phases) + 1)]
    for r in rows:
        seconds = r["phase_seconds"]
        fedavg = sum(v for p, v in seconds.items() if p.startswith("block-fedavg:"))
        cells = [_seconds(seconds.get(p)) for p in phases]
        lines.append(f"| {r[first]} | " + " | ".join(cells) + f" | {_seconds(fedavg if seconds else None)} |")
    return lines


def _md_scaling(doc: dict) -> list[str]:
    scaling = doc["scaling"]
    return [
        "## Scaling (synthetic, small settings)",
        "",
        f"Settings: `{scaling['settings']}`; sites: 2 synthetic modalities, sites = 2 x sites-per-modality + "
        "paired-sites; modalities: `--set synthetic-modalities=M`, one site per modality + 1 paired site. "
        f"Time limit {scaling['timeout_seconds']:.0f} s per run. {doc['plan']['cut']}.",
        "",
        "![scaling](cost-scaling.png)",
        "",
        *_md_scaling_table(scaling["sites"], "sites"),
        "",
        *_md_scaling_table(scaling["modalities"], "modalities"),
        "",
        "Seconds per phase (results.json):",
        "",
        *_md_scaling_phases(scaling["sites"], "sites"),
        "",
        *_md_scaling_phases(scaling["modalities"], "modalities"),
        "",
    ]


def _trend(rows: list[dict], key: str) -> str:
    """``from a to b`` of wall time and peak memory over the completed scaling runs."""
    done = [r for r in rows if r["status"] == "completed"]
    if len(done) < 2:
        return f"fewer than 2 completed {key} points"
    first, last = done[0], done[-1]
    return (
        f"{first[key]} -> {last[key]} {key}: wall time {_seconds(first['wall_seconds'])} -> "
        f"{_seconds(last['wall_seconds'])}, peak RSS {_mib(first['peak_rss_bytes'])} -> {_mib(last['peak_rss_bytes'])}"
    )


def _startup_share(doc: dict) -> str:
    """How much of a TCGA-ACC federation run is start-up: describe phase and outside the orchestrator."""
    timing = doc["time"].get("tcga-acc")
    if not timing or timing["simulate_wall_seconds"]["mean"] is None:
        return "(no completed TCGA-ACC federation run here to measure it)"
    wall = timing["simulate_wall_seconds"]["mean"]
    inside = timing["orchestrator_wall_seconds"]["mean"] or 0.0
    describe = (timing["phase_seconds"].get("describe") or {"mean": 0.0})["mean"] or 0.0
    return (
        f": of a {wall:.1f} s TCGA-ACC `fedlego simulate`, {wall - inside:.1f} s is outside the orchestrator "
        f"(imports, SuperLink, `flwr run`, shutdown) and {describe:.1f} s is `describe`, where Ray and the "
        f"simulated sites start: {100 * (wall - inside + describe) / wall:.0f}% start-up"
    )


def _md_notes(doc: dict) -> list[str]:
    commands = list(dict.fromkeys(r["command"] for r in doc["runs"]))
    scaling = doc["scaling"]
    return [
        "## Cost: notes and commands",
        "",
        f"- Ray and Flower start-up dominate a simulated run{_startup_share(doc)}. Centralized runs are one "
        "Python process with no such cost.",
        f"- Scaling, {_trend(scaling['sites'], 'sites')}; {_trend(scaling['modalities'], 'modalities')}. "
        "Simulated sites share this machine's cores (one CPU per simulated site in Ray), so this measures "
        "the simulation's overhead, not a deployment over separate hospitals.",
        "- Peak memory is the whole process tree, mostly Ray (raylet, GCS, dashboard, workers); a centralized "
        "run is a single process.",
        "- The machine is shared: the 1-minute load average before each run is in the tables; runs started "
        "under load are slower.",
        f"- Section wall time: {doc['wall_seconds'] / 60:.1f} min (budget {doc['budget_seconds'] / 60:.0f} min; "
        "runs that would start past it are recorded as skipped).",
        "",
        "Commands (each with `--out DIR`, one at a time, as `python -m fedlego.cli`):",
        "",
        *(f"- `{c}`" for c in commands),
        "",
    ]


def cost_markdown(doc: dict) -> str:
    """The cost section(s) of the benchmark page, from ``##`` down."""
    mode = "quick smoke run (reduced plan)" if doc["quick"] else "full run"
    intro = [
        "## Cost: simulated federations",
        "",
        f"{mode.capitalize()}. Every command runs as a subprocess, one at a time; wall times include Python, "
        "Flower and Ray start-up.",
        "",
    ]
    sections = [intro, _md_federated_vs_centralized(doc), _md_time(doc), _md_bytes(doc), _md_scaling(doc)]
    return "\n".join(line for part in [*sections, _md_notes(doc)] for line in part)


# -- figures ---------------------------------------------------------------------------------
def _no_data(ax: Any, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _figure_metrics(doc: dict) -> Figure:
    entries = doc["federated_vs_centralized"]
    figure = Figure(figsize=(5.5 * max(1, len(entries)), 4), layout="constrained")
    axes = figure.subplots(1, max(1, len(entries)), squeeze=False)[0]
    for ax, entry in zip(axes, entries, strict=False):
        names = list(entry["models"])
        for offset, (side, color) in enumerate((("federated", "tab:blue"), ("centralized", "tab:orange"))):
            means = [entry["models"][n][side]["mean"] for n in names]
            stds = [entry["models"][n][side]["std"] or 0.0 for n in names]
            xs = [i + (offset - 0.5) * 0.38 for i in range(len(names))]
            ax.bar(
                xs, [m if m is not None else 0.0 for m in means], 0.38, yerr=stds, color=color, label=side, capsize=3
            )
        ax.set_xticks(range(len(names)), [n.replace("block:", "") for n in names], rotation=30, ha="right")
        ax.set_ylim(0, 1.2)
        ax.set_ylabel(f"{entry['metric']} (mean ± std, {len(entry['folds'])} fold(s))")
        ax.set_title(entry["dataset"])
        ax.legend(loc="upper center", ncols=2, fontsize="small")
    if not entries:
        _no_data(axes[0])
    return figure


def _figure_bytes(doc: dict) -> Figure:
    data = doc["bytes"]
    figure = Figure(figsize=(7, 4.2), layout="constrained")
    ax = figure.subplots()
    if not data["available"]:
        _no_data(ax, f"no data ({data['run']} did not complete)")
        return figure
    sites = list(data["per_site"])
    bottom = [0.0] * len(sites)
    for phase in data["phases"]:
        values = [
            (t[phase]["sent"] + t[phase]["received"]) / 2**20 if phase in t else 0.0 for t in data["per_site"].values()
        ]
        if any(values):
            ax.bar(sites, values, bottom=bottom, label=phase)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("MiB sent + received")
    ax.set_title(f"Bytes per site per phase ({data['run']})")
    ax.legend(fontsize="x-small", ncols=2)
    return figure


def _scaling_axes(ax_time: Any, ax_memory: Any, rows: list[dict], key: str) -> None:
    done = [r for r in rows if r["status"] == "completed"]
    xs = [r[key] for r in done]
    if not done:
        _no_data(ax_time)
        _no_data(ax_memory)
    ax_time.plot(xs, [r["wall_seconds"] for r in done], "o-", label="command")
    ax_time.plot(xs, [r["orchestrator_wall_seconds"] or 0.0 for r in done], "s--", label="orchestrator")
    memory = [r["peak_rss_bytes"] / 2**30 for r in done]
    ax_memory.plot(xs, memory, "o-")
    for ax in (ax_time, ax_memory):
        ax.set_xlabel(key)
        if xs:
            ax.set_xticks(xs)
    if key == "sites":
        for ax in (ax_time, ax_memory):
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
    ax_time.set_ylabel("wall time (s)")
    ax_time.set_ylim(bottom=0)
    ax_time.legend(fontsize="small")
    ax_memory.set_ylabel("peak RSS, process tree (GiB)")
    ax_memory.set_ylim(0, 1.15 * max(memory, default=1.0))


def _figure_scaling(doc: dict) -> Figure:
    figure = Figure(figsize=(10, 7), layout="constrained")
    axes = figure.subplots(2, 2)
    _scaling_axes(axes[0][0], axes[0][1], doc["scaling"]["sites"], "sites")
    _scaling_axes(axes[1][0], axes[1][1], doc["scaling"]["modalities"], "modalities")
    figure.suptitle("Simulated federation (synthetic, small settings): wall time and peak memory")
    return figure


FIGURES = {
    "cost-federated-vs-centralized.png": _figure_metrics,
    "cost-bytes.png": _figure_bytes,
    "cost-scaling.png": _figure_scaling,
}


def cost_figures(doc: dict, out_dir: Path) -> list[str]:
    """Write the section's PNG figures into ``out_dir``; returns their file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in FIGURES.items():
        draw(doc).savefig(out_dir / name, dpi=120)
    return list(FIGURES)
