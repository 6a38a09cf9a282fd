"""The run report: one self-contained ``report.html`` rendered from a federation's results.json.

It reads the results document only (so ``fedlego report`` can re-render it offline) and embeds
its figures as base64 PNG data URIs with inline CSS: no script, no external resource, one file a
hospital can mail. Every string taken from the results (site names, reasons...) is escaped.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedlego.server.results import RunResults

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_NAME = "report.html"

HEADER_SETTINGS = (
    "dataset",
    "layout",
    "task",
    "seed",
    "fold",
    "block_rounds",
    "fuse_rounds",
    "fuse_mode",
    "fuse_aggregation",
    "latent_merge",
    "head_merge",
    "weighting",
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status-completed { color: #176317; } .status-failed, .status-interrupted { color: #a40000; }
img { max-width: 100%; } .note { color: #555; }
"""


# -- formatting --------------------------------------------------------------------------------
def _e(value: Any) -> str:
    """Any value as escaped HTML text."""
    return html.escape(str(value))


def _number(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``n/a`` for a missing or non-finite one."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _size(n_bytes: float) -> str:
    """A byte count in B, kB, MB or GB (powers of 1000)."""
    for unit in ("B", "kB", "MB"):
        if abs(n_bytes) < 1000:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.2f} GB"


def _plain(text: str) -> str:
    """A label for matplotlib, with ``$`` escaped so names are never read as mathtext."""
    return str(text).replace("$", r"\$")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; every cell is escaped, columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{''.join(parts)}</section>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _figure(width: float, height: float) -> Figure:
    """A matplotlib figure drawn without pyplot (no global backend state); matplotlib is imported
    only when a report is rendered, so importing this module stays cheap."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _image(figure: Figure, alt: str) -> str:
    """The figure as an embedded PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></p>'


# -- reading the results ---------------------------------------------------------------------
def _site_names(results: Mapping[str, Any]) -> list[str]:
    """Every site named anywhere in the results, described sites first, in order of appearance."""
    names = list(results.get("sites", {}))
    for phase in results.get("phases", {}).values():
        names += list(phase.get("bytes", {}))
    for models in results.get("metrics", {}).values():
        for entry in models.values():
            names += list(entry.get("per_site", {}))
    names += [f["site"] for f in results.get("failures", [])] + [r["site"] for r in results.get("refused", [])]
    return list(dict.fromkeys(str(name) for name in names))


def _evaluated_sites(results: Mapping[str, Any]) -> list[str]:
    """The sites that returned at least one test metric, in the order of ``_site_names``."""
    evaluated = {
        site
        for models in results.get("metrics", {}).values()
        for e in models.values()
        for site in e.get("per_site", {})
    }
    return [site for site in _site_names(results) if site in evaluated]


def _models(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Every evaluated model as (label, entry): merge, ensemble and fuse first, then the blocks."""
    labelled: list[tuple[str, Mapping[str, Any]]] = []
    for phase, models in results.get("metrics", {}).items():
        for model, entry in models.items():
            label = model if model not in {name for name, _ in labelled} else f"{model} ({phase})"
            labelled.append((str(label), entry))
    return sorted(labelled, key=lambda item: item[0].startswith("block:"))


# -- sections --------------------------------------------------------------------------------
def _header(results: Mapping[str, Any]) -> str:
    config = results.get("config", {})
    status = results.get("status", "interrupted")
    rendered = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    facts = [
        ("run ended (UTC)", results.get("finished_at", "not recorded")),
        ("report rendered (UTC)", rendered),
        (
            "task / metric",
            f"{results.get('task', {}).get('kind', config.get('task', '?'))} / {results.get('metric', '?')}",
        ),
        ("sites", ", ".join(results.get("sites", {})) or "none described"),
        ("merged modalities", ", ".join(results.get("merged_modalities", [])) or "none"),
        ("wall time", f"{_number(results.get('wall_seconds'), 1)} s"),
        ("resumed", f"{results.get('resumed', 0)} time(s)"),
        ("audit head", results.get("audit_head", "no audit log")),
    ]
    signatures = results.get("signatures")
    if signatures:
        facts.append(
            (
                "signatures",
                f"packages {'required' if signatures.get('required') else 'not required'}, "
                f"models {'signed' if signatures.get('models_signed') else 'not signed'}",
            )
        )
    facts += [(f"setting {key}", config[key]) for key in HEADER_SETTINGS if key in config]
    error = f'<p class="status-failed">error: {_e(results["error"])}</p>' if results.get("error") else ""
    full = _table(["setting", "value"], [(k, v) for k, v in config.items() if k != "extra"])
    return (
        f"<h1>fedlego run report: {_e(results.get('run_id', 'unknown run'))}</h1>"
        f'<p class="status-{_e(status)}">status: {_e(status)}</p>{error}'
        + _table(["run", "value"], facts)
        + f"<details><summary>all settings</summary>{full}</details>"
    )


def _sites_section(results: Mapping[str, Any]) -> str:
    def counts(values: Any) -> str:
        return ", ".join(str(v) for v in values) if isinstance(values, list) else str(values)

    rows = [
        (
            name,
            ", ".join(d.get("modalities", [])),
            counts(d.get("n_train", "")),
            counts(d.get("n_validation", "")),
            counts(d.get("n_test", "")),
        )
        for name, d in results.get("sites", {}).items()
    ]
    if not rows:
        return _section("Sites", _note("No site described itself."))
    headers = ["site", "modalities", "train patients", "validation patients", "test patients"]
    return _section("Sites", _table(headers, rows), _note("Patient counts are per modality, in the order listed."))


def _metrics_section(results: Mapping[str, Any]) -> str:
    metrics = results.get("metrics", {})
    if not metrics:
        return _section("Metrics per phase and site", _note("No evaluation finished."))
    sites = _evaluated_sites(results)
    metric = results.get("metric", "metric")
    rows = []
    for phase, models in metrics.items():
        for model, entry in models.items():
            per_site = entry.get("per_site", {})
            cells = [f"{_number(per_site[s]['metric'])} (n={per_site[s]['n']})" if s in per_site else "" for s in sites]
            rows.append([phase, model, _number(entry.get("weighted_mean")), entry.get("n", ""), *cells])
    headers = ["phase", "model", f"{metric} (weighted mean)", "n", *sites]
    table = _table(headers, rows, numeric=range(2, len(headers)))
    return _section(
        "Metrics per phase and site",
        _note(f"Test {metric} of each model at each site on the patients it could evaluate (n)."),
        table,
        _models_chart(results),
    )


def _models_chart(results: Mapping[str, Any]) -> str:
    """Grouped bars: each model (merge, ensemble, fuse, blocks) per evaluation population."""
    models = _models(results)
    groups = ["all sites (weighted)", *_evaluated_sites(results)]
    values = {
        label: [entry.get("weighted_mean"), *(entry.get("per_site", {}).get(s, {}).get("metric") for s in groups[1:])]
        for label, entry in models
    }
    if not any(_finite(v) for row in values.values() for v in row):
        return _note("No finite metric to plot.")
    figure = _figure(max(7.0, 1.2 * len(groups) + 2), 4.2)
    axes = figure.subplots()
    width = 0.8 / len(models)
    for index, (label, row) in enumerate(values.items()):
        xs = [g + (index - (len(models) - 1) / 2) * width for g, v in enumerate(row) if _finite(v)]
        axes.bar(xs, [v for v in row if _finite(v)], width, label=_plain(label))
    axes.set_xticks(range(len(groups)), [_plain(g) for g in groups], rotation=15, ha="right")
    axes.set_ylabel(_plain(results.get("metric", "metric")))
    finite = [v for row in values.values() for v in row if _finite(v)]
    if min(finite) >= 0 and max(finite) <= 1:
        axes.set_ylim(0, 1.05)
    figure.legend(fontsize="small", loc="outside lower center", ncols=min(4, len(models)))
    axes.set_title("Test metric per model and evaluation population")
    return _image(figure, "metric per model and site")


def _rounds_section(results: Mapping[str, Any]) -> str:
    rounds = results.get("rounds", {})
    fuse_note = (
        ""
        if "fuse" in rounds
        else _note(
            f"No fuse rounds (fuse-rounds = {results.get('config', {}).get('fuse_rounds', '?')}, "
            "the phase was skipped for lack of paired data, or the run stopped before it)."
        )
    )
    if not rounds:
        return _section("Rounds", fuse_note)
    rows = [
        (
            name,
            ", ".join(_number(v) for v in entry.get("validation_loss", [])),
            entry.get("kept_round", ""),
            "; ".join(", ".join(p) for p in entry["participants"])
            if "participants" in entry
            else ", ".join(entry.get("sites", [])),
        )
        for name, entry in rounds.items()
    ]
    headers = ["rounds", "validation loss per round (0 = starting point)", "kept round", "sites (per round for fuse)"]
    table = _table(headers, rows)
    return _section("Rounds: FedAvg per shared modality and LegoFuse", fuse_note, _rounds_chart(rounds), table)


def _rounds_chart(rounds: Mapping[str, Any]) -> str:
    """Validation loss per round for each round series; the kept (best) round is starred."""
    figure = _figure(7.5, 3.8)
    axes = figure.subplots()
    for name, entry in rounds.items():
        losses = [v if _finite(v) else math.nan for v in entry.get("validation_loss", [])]
        line = axes.plot(range(len(losses)), losses, marker="o", label=_plain(name), lw=2.5 if name == "fuse" else 1.2)
        kept = entry.get("kept_round")
        if isinstance(kept, int) and 0 <= kept < len(losses) and _finite(losses[kept]):
            axes.plot([kept], [losses[kept]], marker="*", markersize=16, color=line[0].get_color(), ls="none")
    axes.set_xlabel("round (0 = before any training)")
    axes.set_ylabel("validation loss (weighted over sites)")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.legend(fontsize="small")
    axes.set_title("Validation loss per round (star: kept round)")
    return _image(figure, "validation loss per round")


def _bytes_section(results: Mapping[str, Any]) -> str:
    phases = results.get("phases", {})
    totals: dict[str, list[int]] = {}
    rows = []
    for phase, record in phases.items():
        for site, traffic in record.get("bytes", {}).items():
            total = totals.setdefault(site, [0, 0])
            total[0] += traffic.get("sent", 0)
            total[1] += traffic.get("received", 0)
            rows.append((phase, site, _size(traffic.get("sent", 0)), _size(traffic.get("received", 0))))
    if not totals:
        return _section("Bytes on the wire", _note("No message was exchanged."))
    rows += [("all phases", site, _size(sent), _size(received)) for site, (sent, received) in totals.items()]
    figure = _figure(7.5, 1.2 + 0.55 * len(totals))
    axes = figure.subplots()
    positions = range(len(totals))
    axes.barh([p - 0.2 for p in positions], [t[0] / 1e6 for t in totals.values()], 0.4, label="sent to the site")
    axes.barh([p + 0.2 for p in positions], [t[1] / 1e6 for t in totals.values()], 0.4, label="received from it")
    axes.set_yticks(list(positions), [_plain(s) for s in totals])
    axes.invert_yaxis()
    axes.set_xlabel("MB (all phases)")
    axes.legend(fontsize="small")
    axes.set_title("Bytes on the wire per site")
    table = _table(["phase", "site", "sent to the site", "received from it"], rows, numeric=(2, 3))
    return _section("Bytes on the wire", _image(figure, "bytes per site"), table)


def _timing_section(results: Mapping[str, Any]) -> str:
    phases = {name: record.get("seconds", 0.0) for name, record in results.get("phases", {}).items()}
    wall = f"Wall time of the run: {_number(results.get('wall_seconds'), 1)} s."
    if not phases:
        return _section("Wall time per phase", _note(wall))
    figure = _figure(7.5, 1.2 + 0.4 * len(phases))
    axes = figure.subplots()
    axes.barh(range(len(phases)), list(phases.values()), color="#4c72b0")
    axes.set_yticks(range(len(phases)), [_plain(p) for p in phases])
    axes.invert_yaxis()
    axes.set_xlabel("seconds")
    axes.set_title("Wall time per phase")
    table = _table(["phase", "seconds"], [(p, _number(s, 2)) for p, s in phases.items()], numeric=(1,))
    return _section("Wall time per phase", _note(wall), _image(figure, "seconds per phase"), table)


def _problems_section(results: Mapping[str, Any]) -> str:
    refused = results.get("refused", [])
    failures = results.get("failures", [])
    refused_part = (
        _table(["site", "modality", "reason"], [(r.get("site"), r.get("modality"), r.get("reason")) for r in refused])
        if refused
        else _note("Refused packages: none.")
    )
    failed_part = (
        _table(["site", "phase", "reason"], [(f.get("site"), f.get("phase"), f.get("reason")) for f in failures])
        if failures
        else _note("Failed sites: none.")
    )
    return _section(
        "Refused packages and failed sites",
        "<h3>Refused packages</h3>",
        refused_part,
        "<h3>Failed sites</h3>",
        failed_part,
    )


def _privacy_section(results: Mapping[str, Any]) -> str:
    privacy = results.get("privacy", {})
    if not privacy:
        return _section("Differential privacy", _note("DP off: no block and no fuse round was trained with DP."))
    blocks = privacy.get("blocks", {})
    fuse = privacy.get("fuse")
    block_part = (
        _table(
            ["block", "site", "ε", "δ", "noise multiplier", "clip"],
            [
                (
                    m,
                    b.get("site"),
                    _number(b.get("epsilon")),
                    b.get("delta"),
                    _number(b.get("noise_multiplier")),
                    b.get("clip"),
                )
                for m, b in blocks.items()
            ],
            numeric=(2, 3, 4, 5),
        )
        if blocks
        else _note("Blocks: DP off.")
    )
    fuse_part = (
        _table(
            ["fuse rounds", "ε", "δ", "noise multiplier", "clip", "rounds", "clipped updates per round"],
            [
                (
                    "central DP-FedAvg",
                    _number(fuse.get("epsilon")),
                    fuse.get("delta"),
                    fuse.get("noise_multiplier"),
                    fuse.get("clip"),
                    fuse.get("rounds"),
                    ", ".join(str(c) for c in fuse.get("clipped_updates", [])),
                )
            ],
        )
        if fuse
        else _note("Fuse rounds: DP off.")
    )
    return _section(
        "Differential privacy",
        _note("Blocks: DP-SGD budget per block (each site's patients). Fuse: central DP-FedAvg over sites."),
        block_part,
        fuse_part,
    )


def render_report(run: RunResults) -> str:
    """The whole report as one self-contained HTML document."""
    results = run.to_dict()
    body = "".join(
        part(results)
        for part in (
            _header,
            _sites_section,
            _metrics_section,
            _rounds_section,
            _bytes_section,
            _timing_section,
            _problems_section,
            _privacy_section,
        )
    )
    title = _e(f"fedlego report {results.get('run_id', '')}")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


def write_report(results: RunResults, out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` from a results document; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_NAME
    path.write_text(render_report(results), encoding="utf-8")
    return path
