"""The run report: one self-contained ``report.html`` rendered from a federation's results.

It reads nothing but the run's ``RunResults`` (what results.json holds, so ``fedlego report`` can
re-render it offline from ``RunResults.read``) and embeds its figures as base64 PNG data URIs with
inline CSS: no script, no external resource, one file a hospital can mail. Every string taken from
the results (site names, reasons...) is escaped.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedlego.server import report_html as h
from fedlego.server.report_summary import curves_section, glossary_box, summary_section
from fedlego.server.results import ModelMetrics, RoundsRecord, RunResults, Traffic

REPORT_NAME = "report.html"

HEADER_SETTINGS = (
    "layout",
    "seed",
    "fold",
    "block-rounds",
    "fuse-rounds",
    "fuse-mode",
    "fuse-aggregation",
    "server-optimizer",
    "round-patience",
    "latent-merge",
    "head-merge",
    "weighting",
)
"""The run-config keys (as ``results.config`` spells them) shown in the report's header."""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status-completed { color: #176317; } .status-failed, .status-interrupted { color: #a40000; }
img { max-width: 100%; } .note { color: #555; }
.summary { background: #f5f8fc; border: 1px solid #c9d6ea; padding: 0.2em 1.2em 0.8em; }
.summary h2 { margin-top: 0.6em; } .warnings { color: #7a4a00; } .warnings ul { margin: 0.3em 0; }
.glossary { border: 1px solid #ccc; padding: 0.5em 1.2em; margin: 1.5em 0; font-size: 0.9em; }
.glossary dt { font-weight: bold; float: left; clear: left; width: 14em; } .glossary dd { margin-left: 15em; }
"""


# -- reading the results ---------------------------------------------------------------------
def _site_names(run: RunResults) -> list[str]:
    """Every site named anywhere in the results, described sites first, in order of appearance."""
    names = list(run.sites)
    for record in run.phases.values():
        names += list(record.bytes)
    for models in run.metrics.values():
        for entry in models.values():
            names += list(entry.per_site)
    names += [f.site for f in run.failures] + [r.site for r in run.refused]
    return list(dict.fromkeys(str(name) for name in names))


def _evaluated_sites(run: RunResults) -> list[str]:
    """The sites that returned at least one test metric, in the order of ``_site_names``."""
    evaluated = {site for models in run.metrics.values() for entry in models.values() for site in entry.per_site}
    return [site for site in _site_names(run) if site in evaluated]


def _models(run: RunResults) -> list[tuple[str, ModelMetrics]]:
    """Every evaluated model as (label, metrics): merge, ensemble and fuse first, then the blocks."""
    labelled: list[tuple[str, ModelMetrics]] = []
    for phase, models in run.metrics.items():
        for model, entry in models.items():
            label = model if model not in {name for name, _ in labelled} else f"{model} ({phase})"
            labelled.append((str(label), entry))
    return sorted(labelled, key=lambda item: item[0].startswith("block:"))


def _metric_name(run: RunResults) -> str:
    return run.metric if run.metric is not None else "metric"


# -- sections --------------------------------------------------------------------------------
def _data_text(run: RunResults) -> str:
    """The data each site used: a bundled data set, or a site folder with its content hash."""
    parts = []
    for site, source in (run.data or {}).items():
        if source.get("source") == "bundled":
            parts.append(f"{site}: bundled {source.get('dataset')}")
        else:
            where = source.get("path") or source.get("name", "")
            parts.append(f"{site}: site folder {where} (sha256 {source.get('sha256', '')[:12]})")
    return "; ".join(parts) or "not reported"


def _header(run: RunResults) -> str:
    config = run.config
    rendered = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    task = (run.task or {}).get("kind", "?")
    bundled = {d.get("dataset") for d in (run.data or {}).values() if d.get("source") == "bundled"}
    if not bundled:  # a user's data: no bundled data set's name anywhere in the report
        config = {k: v for k, v in config.items() if k != "dataset"}
    facts = [
        ("run ended (UTC)", run.finished_at if run.finished_at is not None else "not recorded"),
        ("report rendered (UTC)", rendered),
        ("data", _data_text(run)),
        ("task / metric", f"{task} / {run.metric if run.metric is not None else '?'}"),
        ("sites", ", ".join(run.sites) or "none described"),
        ("merged modalities", ", ".join(run.merged_modalities or []) or "none"),
        ("wall time", f"{h.number(run.wall_seconds, 1)} s"),
        ("resumed", f"{run.resumed if run.resumed is not None else 0} time(s)"),
        ("audit head", run.audit_head if run.audit_head is not None else "no audit log"),
    ]
    if run.signatures is not None:
        signatures = run.signatures
        facts.append(
            (
                "signatures",
                f"packages {'required' if signatures.required else 'not required'}, "
                f"models {'signed' if signatures.models_signed else 'not signed'}",
            )
        )
    facts += [(f"setting {key}", config[key]) for key in HEADER_SETTINGS if key in config]
    full = h.table(["setting", "value"], list(config.items()))
    return h.section(
        "Run details",
        h.table(["run", "value"], facts),
        f"<details><summary>all settings</summary>{full}</details>",
    )


def _title(run: RunResults) -> str:
    status = run.status if run.status is not None else "interrupted"
    error = f'<p class="status-failed">error: {h.escaped(run.error)}</p>' if run.error else ""
    return (
        f"<h1>fedlego run report: {h.escaped(run.run_id)}</h1>"
        f'<p class="status-{h.escaped(status)}">status: {h.escaped(status)}</p>{error}'
    )


def _sites_section(run: RunResults) -> str:
    def counts(values: Any) -> str:
        return ", ".join(str(v) for v in values) if isinstance(values, list) else str(values)

    rows = [
        (
            name,
            ", ".join(site.get("modalities", [])),
            counts(site.get("n_train", "")),
            counts(site.get("n_validation", "")),
            counts(site.get("n_test", "")),
        )
        for name, site in run.sites.items()
    ]
    if not rows:
        return h.section("Sites", h.note("No site described itself."))
    headers = ["site", "modalities", "train patients", "validation patients", "test patients"]
    return h.section(
        "Sites",
        h.table(headers, rows),
        h.note(
            "Patient counts are per modality, in the order listed; 0 also stands for fewer than min-cell "
            "patients, a count a site does not send."
        ),
    )


def _metrics_section(run: RunResults) -> str:
    if not run.metrics:
        return h.section("Metrics per phase and site", h.note("No evaluation finished."))
    sites = _evaluated_sites(run)
    metric = _metric_name(run)
    rows = []
    for phase, models in run.metrics.items():
        for model, entry in models.items():
            per_site = entry.per_site
            cells = [f"{h.number(per_site[s].metric)} (n={per_site[s].n})" if s in per_site else "" for s in sites]
            interval = (
                f"{h.number(entry.pooled_low)} to {h.number(entry.pooled_high)}" if entry.pooled_low is not None else ""
            )
            rows.append(
                [
                    phase,
                    model,
                    h.number(entry.pooled),
                    interval,
                    entry.pairs,
                    h.number(entry.weighted_mean),
                    entry.n,
                    *cells,
                ]
            )
    headers = [
        "phase",
        "model",
        f"{metric} (pooled pairs)",
        "95 % interval",
        "pairs",
        f"{metric} (weighted mean)",
        "n",
        *sites,
    ]
    table = h.table(headers, rows, numeric=range(2, len(headers)))
    return h.section(
        "Metrics per phase and site",
        h.note(
            f"Test {metric} of each model at each site on the patients it could evaluate (n). Pooled: the "
            "comparable pairs of every site counted together (pairs are formed within a site), with its 95 % "
            "jackknife (leave-one-patient-out) interval; a site's own figure from a handful of test patients is noise."
        ),
        table,
        _models_chart(run),
    )


def _models_chart(run: RunResults) -> str:
    """Per model (merge, ensemble, fuse, blocks): the pooled metric with its 95 % interval, each
    site's own figure as a small grey mark, and the chance line."""
    models = _models(run)
    shown = [(label, entry) for label, entry in models if h.finite(entry.pooled) or entry.per_site]
    values = [v for _, e in shown for v in (e.pooled, *(s.metric for s in e.per_site.values())) if h.finite(v)]
    if not values:
        return h.note("No finite metric to plot.")
    drawing = h.figure(7.5, 1.4 + 0.45 * len(shown))
    axes = drawing.subplots()
    for row, (_, entry) in enumerate(shown):
        sites = [s.metric for s in entry.per_site.values() if h.finite(s.metric)]
        axes.plot(sites, [row] * len(sites), "|", color="#999999", markersize=10)
        if not h.finite(entry.pooled):
            continue
        if entry.pooled_low is not None and entry.pooled_high is not None:
            low, high = entry.pooled - entry.pooled_low, entry.pooled_high - entry.pooled
            axes.errorbar([entry.pooled], [row], xerr=[[low], [high]], fmt="o", color="#1f4e9c", capsize=4)
        else:
            axes.plot([entry.pooled], [row], "o", color="#1f4e9c")
    axes.axvline(0.5, ls="--", color="#a40000", lw=1)
    axes.text(0.5, -0.6, " chance", color="#a40000", fontsize="small", va="center")
    axes.set_yticks(range(len(shown)), [h.plain(label) for label, _ in shown])
    axes.set_ylim(len(shown) - 0.5, -0.9)
    axes.set_xlim(min(0.3, *values) - 0.02, 1.0)
    axes.set_xlabel(h.plain(f"test {_metric_name(run)}: pooled, 95 % interval; grey marks: single sites"))
    axes.set_title("Test metric per model")
    return h.image(drawing, "metric per model with intervals")


def _round_sites(record: RoundsRecord) -> str:
    """Who took part: per round for fuse, once for a block."""
    if record.participants is not None:
        return "; ".join(", ".join(p) for p in record.participants)
    return ", ".join(record.sites or [])


def _validation_size(record: RoundsRecord) -> str:
    patients, events = record.fewest_validation()
    if patients is None:
        return "not reported"
    return str(patients) if events is None else f"{patients} ({events})"


def _rounds_section(run: RunResults) -> str:
    rounds = run.rounds
    fuse_note = (
        ""
        if "fuse" in rounds
        else h.note(
            f"No fuse rounds (fuse-rounds = {run.config.get('fuse-rounds', '?')}, "
            "the phase was skipped for lack of paired data, or the run stopped before it)."
        )
    )
    if not rounds:
        return h.section("Rounds", fuse_note)
    rows = [
        (
            name,
            ", ".join(h.number(v) for v in record.validation_loss),
            record.kept_round,
            _validation_size(record),
            _round_sites(record),
        )
        for name, record in rounds.items()
    ]
    headers = [
        "rounds",
        "validation loss per round (0 = starting point)",
        "kept round",
        "validation patients (events), fewest in a round",
        "sites (per round for fuse)",
    ]
    table = h.table(headers, rows)
    return h.section("Rounds: FedAvg per shared modality and LegoFuse", fuse_note, _rounds_chart(rounds), table)


def _rounds_chart(rounds: Mapping[str, RoundsRecord]) -> str:
    """Validation loss per round for each round series; the kept (best) round is starred."""
    figure = h.figure(7.5, 3.8)
    axes = figure.subplots()
    for name, record in rounds.items():
        losses = [v if h.finite(v) else math.nan for v in record.validation_loss]
        line = axes.plot(range(len(losses)), losses, marker="o", label=h.plain(name), lw=2.5 if name == "fuse" else 1.2)
        kept = record.kept_round
        if isinstance(kept, int) and 0 <= kept < len(losses) and h.finite(losses[kept]):
            axes.plot([kept], [losses[kept]], marker="*", markersize=16, color=line[0].get_color(), ls="none")
    axes.set_xlabel("round (0 = before any training)")
    axes.set_ylabel("validation loss (weighted over sites)")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.legend(fontsize="small")
    axes.set_title("Validation loss per round (star: kept round)")
    return h.image(figure, "validation loss per round")


def _bytes_section(run: RunResults) -> str:
    totals: dict[str, Traffic] = {}
    rows = []
    for phase, record in run.phases.items():
        for site, traffic in record.bytes.items():
            total = totals.setdefault(site, Traffic())
            total.sent += traffic.sent
            total.received += traffic.received
            rows.append((phase, site, h.size(traffic.sent), h.size(traffic.received)))
    if not totals:
        return h.section("Bytes on the wire", h.note("No message was exchanged."))
    rows += [("all phases", site, h.size(total.sent), h.size(total.received)) for site, total in totals.items()]
    figure = h.figure(7.5, 1.2 + 0.55 * len(totals))
    axes = figure.subplots()
    positions = range(len(totals))
    axes.barh([p - 0.2 for p in positions], [t.sent / 1e6 for t in totals.values()], 0.4, label="sent to the site")
    axes.barh([p + 0.2 for p in positions], [t.received / 1e6 for t in totals.values()], 0.4, label="received from it")
    axes.set_yticks(list(positions), [h.plain(s) for s in totals])
    axes.invert_yaxis()
    axes.set_xlabel("MB (all phases)")
    axes.legend(fontsize="small")
    axes.set_title("Bytes on the wire per site")
    table = h.table(["phase", "site", "sent to the site", "received from it"], rows, numeric=(2, 3))
    return h.section("Bytes on the wire", h.image(figure, "bytes per site"), table)


def _timing_section(run: RunResults) -> str:
    phases = {name: record.seconds for name, record in run.phases.items()}
    wall = f"Wall time of the run: {h.number(run.wall_seconds, 1)} s."
    if not phases:
        return h.section("Wall time per phase", h.note(wall))
    figure = h.figure(7.5, 1.2 + 0.4 * len(phases))
    axes = figure.subplots()
    axes.barh(range(len(phases)), list(phases.values()), color="#4c72b0")
    axes.set_yticks(range(len(phases)), [h.plain(p) for p in phases])
    axes.invert_yaxis()
    axes.set_xlabel("seconds")
    axes.set_title("Wall time per phase")
    table = h.table(["phase", "seconds"], [(p, h.number(s, 2)) for p, s in phases.items()], numeric=(1,))
    return h.section("Wall time per phase", h.note(wall), h.image(figure, "seconds per phase"), table)


def _problems_section(run: RunResults) -> str:
    refused_part = (
        h.table(["site", "modality", "reason"], [(r.site, r.modality, r.reason) for r in run.refused])
        if run.refused
        else h.note("Refused packages: none.")
    )
    failed_part = (
        h.table(["site", "phase", "reason"], [(f.site, f.phase, f.reason) for f in run.failures])
        if run.failures
        else h.note("Failed sites: none.")
    )
    return h.section(
        "Refused packages and failed sites",
        "<h3>Refused packages</h3>",
        refused_part,
        "<h3>Failed sites</h3>",
        failed_part,
    )


def _disclosure_note(run: RunResults) -> str:
    """The disclosure settings the sites applied (``common.disclosure``)."""
    min_cell = run.config.get("min-cell")
    if min_cell is None:
        return h.note("Disclosure control: not recorded (a run made before min-cell existed).")
    if int(min_cell) <= 1:
        return h.note("Disclosure control: OFF (min-cell = 1): sites sent statistics over any number of patients.")
    schema = run.schema_sha256 or ""
    contract = f" Every site checked its data against the consortium schema {schema[:12]}." if schema else ""
    return h.note(
        f"Disclosure control: min-cell = {min_cell}. Every category, statistic, count, time cut point and metric "
        f"a site sent rests on at least {min_cell} patients (a site's own threshold may be higher); rarer "
        "categories were folded into 'other', counts below it are shown as 0, and survival cut points were "
        f"sent rounded to two significant digits, only by sites with at least {min_cell} training events." + contract
    )


def _privacy_section(run: RunResults) -> str:
    privacy = run.privacy
    if privacy is None or (privacy.blocks is None and privacy.fuse is None):
        return h.section(
            "Privacy", _disclosure_note(run), h.note("DP off: no block and no fuse round was trained with DP.")
        )
    blocks = privacy.blocks or {}
    fuse = privacy.fuse
    block_part = (
        h.table(
            ["block", "site", "ε", "δ", "noise multiplier", "clip"],
            [
                (m, b.site, h.number(b.epsilon), b.delta, h.number(b.noise_multiplier), b.clip)
                for m, b in blocks.items()
            ],
            numeric=(2, 3, 4, 5),
        )
        if blocks
        else h.note("Blocks: DP off.")
    )
    fuse_part = (
        h.table(
            ["fuse rounds", "ε", "δ", "noise multiplier", "clip", "rounds", "clipped updates per round"],
            [
                (
                    "central DP-FedAvg",
                    h.number(fuse.epsilon),
                    fuse.delta,
                    fuse.noise_multiplier,
                    fuse.clip,
                    fuse.rounds,
                    ", ".join(str(c) for c in fuse.clipped_updates),
                )
            ],
        )
        if fuse is not None
        else h.note("Fuse rounds: DP off.")
    )
    return h.section(
        "Privacy",
        _disclosure_note(run),
        h.note("Blocks: DP-SGD budget per block (each site's patients). Fuse: central DP-FedAvg over sites."),
        block_part,
        fuse_part,
    )


def render_report(run: RunResults) -> str:
    """The whole report as one self-contained HTML document."""
    body = "".join(
        part(run)
        for part in (
            _title,
            summary_section,
            curves_section,
            _metrics_section,
            lambda _: glossary_box(),
            _header,
            _sites_section,
            _rounds_section,
            _bytes_section,
            _timing_section,
            _problems_section,
            _privacy_section,
        )
    )
    title = h.escaped(f"fedlego report {run.run_id}")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


def write_report(results: RunResults, out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` from a run's results; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_NAME
    path.write_text(render_report(results), encoding="utf-8")
    return path
