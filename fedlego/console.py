"""What the command line prints about a federated run."""

from __future__ import annotations

import math

from fedlego.server.results import ModelMetrics, RunResults

FEW_TEST_PATIENTS = 20
"""Below this many test patients a site's own metric gets a warning."""
FEW_VALIDATION_EVENTS = 30
"""Below this many validation events (classification: patients of the rarest class) the round
kept by federated rounds gets a warning."""


def _interval(entry: ModelMetrics) -> str:
    if entry.pooled_low is None or entry.pooled_high is None:
        return ""
    return f" [{entry.pooled_low:.2f}, {entry.pooled_high:.2f}]"


def few_validation_rounds(results: RunResults) -> str | None:
    """A warning naming the round series whose kept round was chosen on fewer than
    ``FEW_VALIDATION_EVENTS`` validation events (the fewest any of its rounds was measured on);
    None when there is none, or the sites did not say."""
    kind = (results.task or {}).get("kind")
    survival = kind in (None, "survival")
    unit, short = ("events", "events") if survival else ("patients of the rarest class", "in the rarest class")
    few = []
    for name, record in results.rounds.items():
        patients, events = record.fewest_validation()
        if events is not None and len(record.validation_loss) > 1 and events < FEW_VALIDATION_EVENTS:
            shown = f"{patients} patients, " if patients is not None else ""
            rounds = len(record.validation_loss) - 1
            few.append(f"{name} kept round {record.kept_round} of {rounds} ({shown}{events} {short})")
    if not few:
        return None
    return (
        f"note: rounds chosen on fewer than {FEW_VALIDATION_EVENTS} validation {unit}: {'; '.join(few)}; "
        "on so few, the choice between rounds is mostly noise"
    )


def sites_with_few_test_patients(results: RunResults) -> list[str]:
    """The sites that evaluated some model on fewer than ``FEW_TEST_PATIENTS`` test patients."""
    return sorted(
        {
            site
            for models in results.metrics.values()
            for entry in models.values()
            for site, value in entry.per_site.items()
            if value.n < FEW_TEST_PATIENTS
        }
    )


def federation_table(results: RunResults) -> str:
    """Per phase and model: sample-weighted mean metric over sites, with each site's value; then
    the refused packages and failed sites."""
    metric = results.metric or "metric"
    lines = [
        f"{'phase':<8} {'model':<18} {metric + ' (weighted)':>20} {'pooled [95 % interval] (pairs)':>32}  n   per site"
    ]
    for phase, models in results.metrics.items():
        for model, entry in models.items():
            shown = "n/a" if math.isnan(entry.weighted_mean) else f"{entry.weighted_mean:.3f}"
            pooled = "n/a" if math.isnan(entry.pooled) else f"{entry.pooled:.3f}{_interval(entry)} ({entry.pairs})"
            per_site = ", ".join(
                f"{site} {v.metric:.3f} (n={v.n})" if not math.isnan(v.metric) else f"{site} n/a (n={v.n})"
                for site, v in entry.per_site.items()
            )
            lines.append(f"{phase:<8} {model:<18} {shown:>20} {pooled:>32}  {entry.n:<3} {per_site}")
    small = sites_with_few_test_patients(results)
    if small:
        lines.append(
            f"note: {', '.join(small)} evaluated on fewer than {FEW_TEST_PATIENTS} test patients: their own figures "
            "are noise; read the pooled column"
        )
    fuse = results.rounds.get("fuse")
    if fuse is not None and fuse.kept_round == 0 and "fuse" in results.metrics:
        start = f"(the fuse row is the {results.config.get('fuse-mode', 'merge')} model as it started)"
        if not all(math.isnan(loss) for loss in fuse.validation_loss):
            lines.append(
                f"fuse kept round 0: no round lowered the validation loss enough, so no fine-tuning was kept {start}"
            )
    for name, record in results.rounds.items():
        if record.validation_loss and all(math.isnan(loss) for loss in record.validation_loss):
            kept = (
                "the last round was kept (unvalidated-rounds = last)"
                if record.kept_round
                else "what the rounds trained was not kept (unvalidated-rounds = start)"
            )
            lines.append(
                f"{name} kept round {record.kept_round}: no site reported a validation loss (under min-cell = "
                f"{results.config.get('min-cell')} validation patients, events or others each: disclosure control), "
                f"so no round could be chosen on validation; {kept}"
            )
    rounds_note = few_validation_rounds(results)
    lines += [rounds_note] if rounds_note else []
    lines += [f"refused: {r.site}/{r.modality}: {r.reason}" for r in results.refused]
    lines += [f"failed: {f.site} in {f.phase}: {f.reason}" for f in results.failures]
    return "\n".join(lines)


def phase_times(results: RunResults) -> str:
    """``describe 1.2 s, block 3.4 s, ...``."""
    return ", ".join(f"{name} {record.seconds:.1f} s" for name, record in results.phases.items())
