"""The report's opening for the people who decide: which model to use and how sure that is, what
it rests on, the warnings that matter, the outcome curves (Kaplan-Meier by predicted risk group or
ROC) and a glossary. Everything is read from ``RunResults``; nothing here is computed from patients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedlego.common.outcome_curves import GROUPS, kaplan_meier, roc_points
from fedlego.console import FEW_TEST_PATIENTS, few_validation_rounds, sites_with_few_test_patients
from fedlego.server import report_html as h
from fedlego.server.results import ModelMetrics, RunResults

CHANCE = 0.5
"""The c-index and the AUC of a model that ranks patients at random."""

METRIC_MEANING = {
    "c-index": (
        "the c-index (concordance): of two test patients, how often the one the model ranks at higher risk "
        "had the event first; 0.5 is chance, 1 is a perfect ranking"
    ),
    "auc": (
        "the AUC (area under the ROC curve): how often a patient with the outcome is scored above one "
        "without it; 0.5 is chance, 1 is a perfect ranking"
    ),
}

MODEL_NAMES = {
    "fuse": "the fused model (LegoFuse: the merged model fine-tuned on paired data across sites)",
    "merge": "the merged model (LegoMerge: the sites' blocks combined without further training)",
}

GLOSSARY = (
    ("site", "a hospital taking part; its patients never leave it"),
    ("modality", "one kind of data: clinical table, omics, time series, images"),
    ("block (block:NAME)", "a model trained on one modality only, at the sites holding it"),
    ("merge", "the blocks combined into one multimodal model, without paired data or training"),
    ("fuse", "the merged model fine-tuned for a few federated rounds at sites holding several modalities"),
    ("paired data", "patients for whom a site holds several modalities"),
    ("validation / test patients", "held out at each site: validation chooses rounds, test only measures"),
    ("pooled pairs", "the test patients' comparable pairs of every site counted together (pairs within a site)"),
    ("95 % interval", "a 95 % confidence interval for the metric (jackknife over the test patients)"),
    ("min-cell", "the fewest patients behind any count or statistic a site sends"),
)


@dataclass
class Choice:
    """The model a reader should use, its metrics and how it was chosen."""

    name: str
    metrics: ModelMetrics
    how: str


def chosen_model(run: RunResults) -> Choice | None:
    """The fused model when it was evaluated, else the merged model (None: neither was)."""
    for name in ("fuse", "merge"):
        entry = run.metrics.get(name, {}).get(name)
        if entry is not None and math.isfinite(entry.pooled):
            return Choice(name, entry, _how_chosen(run, name))
    return None


def _how_chosen(run: RunResults, name: str) -> str:
    rounds = run.rounds.get("fuse")
    if name == "merge":
        return "No fused model was evaluated, so the merged model is the run's final model."
    if rounds is None or len(rounds.validation_loss) < 2:
        return "The fused model is the run's final model."
    total = len(rounds.validation_loss) - 1
    if all(math.isnan(v) for v in rounds.validation_loss):
        return (
            f"No site could report a validation loss, so round {rounds.kept_round} of {total} was kept by rule "
            f"(unvalidated-rounds = {run.config.get('unvalidated-rounds', '?')}), not on validation."
        )
    kept = (
        "round 0, the merged model as it was: no fine-tuning round improved it"
        if rounds.kept_round == 0
        else f"round {rounds.kept_round} of {total}"
    )
    return f"Its fine-tuning rounds were chosen on the sites' validation patients (never on test): {kept}."


def _best_block(run: RunResults) -> tuple[str, ModelMetrics] | None:
    blocks = [
        (model, entry)
        for models in run.metrics.values()
        for model, entry in models.items()
        if model.startswith("block:") and math.isfinite(entry.pooled)
    ]
    return max(blocks, key=lambda item: item[1].pooled) if blocks else None


def _with_interval(entry: ModelMetrics) -> str:
    if entry.pooled_low is None or entry.pooled_high is None:
        return f"{entry.pooled:.2f} (no interval: a site did not send the sums it needs)"
    return f"{entry.pooled:.2f} (95 % interval {entry.pooled_low:.2f} to {entry.pooled_high:.2f})"


def _against_chance(entry: ModelMetrics) -> str:
    if entry.pooled_low is None:
        return ""
    if entry.pooled_low > CHANCE:
        return " Its interval lies above chance (0.5)."
    return " Its interval includes chance (0.5): on these test patients it cannot be told apart from a random ranking."


def warnings(run: RunResults) -> list[str]:
    """The warnings that matter to whoever uses the model."""
    found = [f"The run ended {run.status}."] if run.status not in (None, "completed") else []
    found += [f"Missing from this run: {gap}." for gap in run.gaps or []]
    found += [f"Site {f.site} failed in {f.phase}: {f.reason.splitlines()[0]}" for f in run.failures]
    found += [f"A package of {r.site} ({r.modality}) was refused: {r.reason}" for r in run.refused]
    unvalidated = [
        name
        for name, record in run.rounds.items()
        if record.validation_loss and all(map(math.isnan, record.validation_loss))
    ]
    if unvalidated:
        found.append(
            f"No site could report a validation loss for {', '.join(unvalidated)} (under min-cell validation patients, "
            "events or others at every site): those rounds were kept by rule, not chosen on validation."
        )
    rounds_note = few_validation_rounds(run)
    found += [rounds_note.removeprefix("note: ").capitalize() + "."] if rounds_note else []
    small = sites_with_few_test_patients(run)
    silent = [
        site
        for site in run.sites
        if site not in {s for m in run.metrics.values() for e in m.values() for s in e.per_site}
    ]
    if silent and run.metrics:
        found.append(
            f"{', '.join(silent)} reported no test metric (fewer than min-cell test patients, events or patients "
            "without the event: disclosure control), so no model was measured on its patients."
        )
    if small:
        found.append(
            f"{', '.join(small)} evaluated on fewer than {FEW_TEST_PATIENTS} test patients: read the pooled figures."
        )
    return found


def _outcome_sentence(run: RunResults) -> str:
    """What the event or outcome is (the consortium schema's words), or where to name it."""
    if run.outcome:
        return f"The {'event' if run.metric == 'c-index' else 'outcome'}: {run.outcome}."
    return (
        "What the event or outcome is, this run does not say: the sites' labels code it, and the consortium "
        "schema can name it (`fedlego schema --outcome`)."
    )


def summary_section(run: RunResults) -> str:
    """What to use and how sure that is, what it rests on, and the warnings."""
    metric = run.metric or "metric"
    choice = chosen_model(run)
    parts = []
    if choice is None:
        parts.append(h.note("No merged or fused model was evaluated: there is no model to recommend from this run."))
    else:
        entry = choice.metrics
        parts.append(
            f"<p><b>Model to use: {h.escaped(MODEL_NAMES[choice.name])}.</b> {h.escaped(choice.how)}</p>"
            f"<p>Test {h.escaped(metric)}: <b>{h.escaped(_with_interval(entry))}</b>."
            f"{h.escaped(_against_chance(entry))}</p>"
        )
        best = _best_block(run)
        if best is not None:
            name, block = best
            parts.append(
                f"<p>Best single modality, {h.escaped(name)}: {h.escaped(_with_interval(block))}, on {block.n} "
                f"test patients holding that modality. It is picked here by its test figure (an optimistic "
                f"reference) and rests on another set of test patients ({block.n} against {entry.n}), so the two "
                "figures are not a paired comparison: the table below compares them site by site.</p>"
            )
        sites = len(entry.per_site)
        parts.append(
            f"<p>It rests on {entry.n} test patients at {sites} site{'s' if sites != 1 else ''} "
            f"({entry.pairs} comparable pairs). {h.escaped(METRIC_MEANING.get(metric, metric).capitalize())}.</p>"
        )
    parts.append(f"<p>{h.escaped(_outcome_sentence(run))}</p>")
    found = warnings(run)
    if found:
        items = "".join(f"<li>{h.escaped(w)}</li>" for w in found)
        parts.append(f'<div class="warnings"><b>Warnings</b><ul>{items}</ul></div>')
    else:
        parts.append(h.note("No warnings: every site took part, no package was refused."))
    return f'<section class="summary" id="summary"><h2>Summary</h2>{"".join(parts)}</section>'


def glossary_box() -> str:
    """The report's vocabulary, in a box."""
    rows = "".join(f"<dt>{h.escaped(term)}</dt><dd>{h.escaped(meaning)}</dd>" for term, meaning in GLOSSARY)
    return f'<aside class="glossary"><b>Glossary</b><dl>{rows}</dl></aside>'


# -- outcome curves ---------------------------------------------------------------------------------
def _survival_figure(curve: dict[str, Any], time_label: str) -> str:
    drawing = h.figure(7.5, 4.2)
    axes = drawing.subplots()
    rows = []
    for name in GROUPS:
        counts = curve["groups"].get(name)
        if not counts or not counts.get("at_risk"):
            continue
        times, survival, low, high = kaplan_meier(curve["grid"], counts)
        line = axes.step(times, survival, where="post", label=h.plain(name))
        axes.fill_between(times, low, high, step="post", alpha=0.2, color=line[0].get_color())
        rows.append((name, *counts["at_risk"]))
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(h.plain(time_label))
    axes.set_ylabel("proportion without the event")
    axes.legend(fontsize="small")
    axes.set_title("Test patients by predicted risk (Kaplan-Meier, 95 % band)")
    grid = curve["grid"]
    starts = ["0", *(h.number(g, 0 if g >= 10 else 2) for g in grid[:-1])]
    width = max(len(r) for r in rows) - 1 if rows else 0
    at_risk = h.table(["at risk from", *starts[:width]], [r + ("",) * (width + 1 - len(r)) for r in rows])
    return h.image(drawing, "Kaplan-Meier curves by predicted risk group") + at_risk


def _roc_figure(curve: dict[str, Any], _time_label: str) -> str:
    fpr, tpr = roc_points(curve)
    drawing = h.figure(5.0, 5.0)
    axes = drawing.subplots()
    axes.plot(fpr, tpr, marker="o", markersize=3, label="model (pooled over sites)")
    axes.plot([0, 1], [0, 1], ls="--", color="grey", label="chance")
    axes.set_xlabel("false positive rate (1 - specificity)")
    axes.set_ylabel("true positive rate (sensitivity)")
    axes.set_aspect("equal")
    axes.legend(fontsize="small", loc="lower right")
    axes.set_title("ROC curve of the test patients")
    return h.image(drawing, "ROC curve")


CURVE_FIGURES = {"survival": _survival_figure, "roc": _roc_figure}

CURVE_NOTES = {
    "survival": (
        "Each site split its test patients at its own median predicted risk (higher: above that median) and sent, "
        "per time interval, how many of each group were at risk and had the event, only while at least min-cell "
        "patients were at risk (a blank cell: the group's curve stops there); the counts of every site are summed "
        "here. The time points derive from the run's survival bins (event-weighted means of the sites' rounded "
        "quantiles). Events and censorings are counted at the end of their interval "
        "(a Kaplan-Meier estimate on grouped times; scikit-survival). Curves that separate widely mean the "
        "model ranks patients usefully; the c-index above is the measure."
    ),
    "roc": (
        "Each site sent, for 21 probability thresholds, how many of its test patients with and without the outcome "
        "were scored at or above it (only with at least min-cell patients of each); the counts of every site are "
        "summed here. The dashed line is chance."
    ),
}


def curves_section(run: RunResults) -> str:
    """The outcome curve of the model to use."""
    choice = chosen_model(run)
    curve = run.curves.get(choice.name) if choice is not None else None
    if curve is None:
        why = (
            "No outcome curve: the model to use has none (a multi-class task, sites under min-cell, or a run made "
            "before curves existed)."
        )
        return h.section("Outcome curves", h.note(why))
    unit = (run.task or {}).get("time_unit")
    time_label = f"time ({unit})" if unit else "time (in the unit of the survival labels)"
    sites = curve.get("sites", 0)
    return h.section(
        f"Outcome curves: {MODEL_NAMES[choice.name].split(' (')[0]}",
        CURVE_FIGURES[curve["kind"]](curve, time_label),
        h.note(f"{CURVE_NOTES[curve['kind']]} Sites whose counts are summed: {sites}."),
    )
