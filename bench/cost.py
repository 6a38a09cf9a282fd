"""Benchmark suite, cost section: federated vs centralized metrics over folds, wall time, peak memory,
bytes per site per phase, and how the simulated federation scales with sites and modalities.

Every number comes from a real ``python -m fedlego.cli ...`` subprocess run inside :func:`run_cost`,
one at a time (so wall time includes Python, Flower and Ray start-up), with the memory of its whole
process tree polled every 0.25 s. What a run computed is read from the results.json it wrote, never
from what it printed: ``RunResults.read`` for a federation, the centralized document as it is. The
suite (``bench/suite.py``) calls :func:`run_cost`, then ``cost_page.cost_markdown`` and
``cost_page.cost_figures``; ``measure.run_measured`` measures each run.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from fedlego.server.results import RESULTS_NAME, ModelMetrics, RunResults
from fedlego_bench.measure import run_measured

_Results = TypeVar("_Results", RunResults, dict)

DATASETS = ("tcga-acc", "pbc")
FOLDS = 5
# Small settings for the synthetic scaling runs (the modality count is set per run).
SMALL = ["--set", "block-epochs=5", "--set", "synthetic-patients=400", "--fuse-rounds", "1", "--block-rounds", "1"]
# target sites -> (sites per modality, paired sites) with 2 synthetic modalities:
# sites = 2 x sites-per-modality + paired-sites.
SITE_LAYOUTS = {2: (1, 0), 4: (1, 2), 8: (3, 2), 16: (7, 2), 32: (15, 2)}
SCALING_SITES = (2, 8, 32)
SCALING_MODALITIES = (2, 4, 6)
SCALING_CUT = (
    "Scaling points cut to sites {2, 8, 32} and modalities {2, 4, 6} (of 2-32 and 2-6) to keep the "
    "section within its 13-minute budget on 2 cores: every simulated run costs 30-60 s, most of it "
    "Ray and Flower start-up, and the 10 fold runs come first"
)
QUICK_CUT = (
    "Quick smoke run: fold 0 of TCGA-ACC only (no PBC), scaling at 2 sites and 2 modalities only; "
    "the full run has 5 folds of TCGA-ACC and PBC and 3 points per scaling axis"
)
NO_DISCLOSURE_CONTROL = ["min-cell=1"]
"""The comparison runs the public bundled cohorts without disclosure control: TCGA-ACC's simulated
hospitals hold 1-5 test patients each, so under min-cell = 10 no site would report a metric; what
disclosure control costs is measured by bench/disclosure.py."""
TIMEOUT = {"simulate": 240.0, "centralized": 300.0, "scaling": 240.0}
BUDGET_SECONDS = 13 * 60  # runs not started by then are recorded as skipped
TAIL_LINES = 15


# -- one fedlego command ---------------------------------------------------------------------
class _Runner:
    """Runs ``fedlego`` commands one at a time under a shared deadline, naming each output folder."""

    def __init__(self, work: Path, log: Callable[[str], None], budget: float = BUDGET_SECONDS) -> None:
        self.work, self.log, self.budget = work, log, budget
        self.deadline = time.monotonic() + budget
        self.count = 0

    def simulate(self, label: str, arguments: list[str], timeout: float) -> tuple[dict[str, Any], RunResults | None]:
        """``fedlego simulate ARGUMENTS``: the run's record (for the document) and its results (None
        when it wrote no readable results.json)."""
        return self._run(label, ["simulate", *arguments], timeout, _federated_results)

    def centralized(self, label: str, arguments: list[str], timeout: float) -> tuple[dict[str, Any], dict | None]:
        """``fedlego centralized ARGUMENTS``: the run's record and its results.json document."""
        return self._run(label, ["centralized", *arguments], timeout, _centralized_results)

    def _run(
        self,
        label: str,
        arguments: list[str],
        timeout: float,
        read: Callable[[Path], tuple[_Results | None, _Summary | None]],
    ) -> tuple[dict[str, Any], _Results | None]:
        self.count += 1
        out = self.work / f"{self.count:02d}-{label.replace(' ', '-').replace('/', '-')}"
        shown = " ".join(["fedlego", *arguments, "--out", "DIR"])
        record: dict[str, Any] = {"label": label, "command": shown, "load_average_1min_before": os.getloadavg()[0]}
        if time.monotonic() > self.deadline:
            self.log(f"  skipped (over the {self.budget / 60:.0f}-minute budget): {shown}")
            return {**record, "status": "skipped: over budget", **_EMPTY_MEASUREMENT}, None
        self.log(f"  $ {shown}")
        command = [sys.executable, "-m", "fedlego.cli", *arguments, "--out", str(out)]
        flwr_home = out.resolve() / ".flower" / "home" if arguments[0] == "simulate" else None
        (out / RESULTS_NAME).unlink(missing_ok=True)  # never read a previous run's results
        try:
            measured = run_measured(command, flwr_home, timeout)
        except OSError as error:
            return {**record, "status": f"failed: {error}", **_EMPTY_MEASUREMENT}, None
        results, summary = read(out / RESULTS_NAME)
        record.update({k: v for k, v in measured.items() if k != "output"})
        record["status"] = _status(measured, summary)
        record["timeout_seconds"] = timeout
        record["orchestrator_wall_seconds"] = summary.wall_seconds if summary else None
        record["phase_seconds"] = summary.phase_seconds if summary else {}
        record["site_count"] = summary.site_count if summary else None
        if record["status"] != "completed":
            record["output_tail"] = measured["output"][-TAIL_LINES:]
        self.log(
            f"  -> {record['status']}, {measured['wall_seconds']:.1f} s, {measured['peak_rss_bytes'] / 2**20:.0f} MiB"
        )
        return record, results


_EMPTY_MEASUREMENT = {
    "returncode": None,
    "wall_seconds": None,
    "timed_out": False,
    "peak_rss_bytes": None,
    "peak_processes": None,
    "orchestrator_wall_seconds": None,
    "phase_seconds": {},
    "site_count": None,
}


@dataclass
class _Summary:
    """What a run's record takes from its results.json: the run's own status (``completed`` when it
    records none), its wall time inside the command, seconds per phase and, for a federation, the
    number of sites it describes."""

    status: str
    wall_seconds: float | None
    phase_seconds: dict[str, float] = field(default_factory=dict)
    site_count: int | None = None


def _federated_results(path: Path) -> tuple[RunResults | None, _Summary | None]:
    """A federation's results.json, typed; (None, None) when it is missing or unreadable."""
    try:
        results = RunResults.read(path)
    except (OSError, ValueError):
        return None, None
    summary = _Summary(
        status=results.status if results.status is not None else "unfinished (no outcome recorded)",
        wall_seconds=results.wall_seconds,
        phase_seconds={name: phase.seconds for name, phase in results.phases.items()},
        site_count=len(results.sites),
    )
    return results, summary


def _centralized_results(path: Path) -> tuple[dict | None, _Summary | None]:
    """The centralized pipeline's results.json document; (None, None) when missing or unreadable."""
    document = _read_json(path)
    if document is None:
        return None, None
    return document, _Summary(status=document.get("status", "completed"), wall_seconds=document.get("wall_seconds"))


def _read_json(path: Path) -> dict | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _status(measured: dict[str, Any], summary: _Summary | None) -> str:
    """completed, timed out, or failed: why."""
    if measured["timed_out"]:
        return f"failed: timed out after {measured['wall_seconds']:.0f} s"
    if summary is None:
        return f"failed: exit {measured['returncode']}, no results.json"
    if summary.status != "completed":
        return f"failed: run status {summary.status}"
    if measured["returncode"] != 0:
        return f"failed: exit {measured['returncode']}"
    return "completed"


# -- federated vs centralized ----------------------------------------------------------------
def _mean_std(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation of the values that exist (None and NaN skipped)."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    return {
        "mean": statistics.fmean(kept) if kept else None,
        "std": statistics.stdev(kept) if len(kept) > 1 else None,
        "n_folds": len(kept),
        "per_fold": [None if v is None or math.isnan(v) else float(v) for v in values],
    }


def _model_names(federated: list[RunResults | None], centralized: dict | None) -> list[str]:
    """Blocks (centralized order first), then merge and fuse."""
    first = next(iter((centralized or {}).get("folds", [])), {})
    names = [n for n in first.get("models", {}) if n.startswith("block:")]
    for result in federated:
        names += [n for n in (result.metrics.get("merge", {}) if result else {}) if n.startswith("block:")]
    return [*dict.fromkeys(names), "merge", "fuse"]


def _federated_entry(result: RunResults | None, name: str) -> ModelMetrics | None:
    """A model's metrics in a federation's results: ``fuse`` from the fuse phase, the rest from merge."""
    phase = "fuse" if name == "fuse" else "merge"
    return result.metrics.get(phase, {}).get(name) if result else None


def _centralized_entry(centralized: dict | None, fold: int, name: str) -> dict:
    folds = (centralized or {}).get("folds", [])
    return folds[fold].get("models", {}).get(name, {}) if fold < len(folds) else {}


def compare_metrics(federated: list[RunResults | None], centralized: dict | None, folds: list[int]) -> dict[str, dict]:
    """Per model: federated sample-weighted mean over sites and centralized complete-case metric,
    each as mean +- std over folds, with the test counts per fold."""
    rows = {}
    for name in _model_names(federated, centralized):
        fed = [_federated_entry(result, name) for result in federated]
        cen = [_centralized_entry(centralized, k, name) for k in folds]
        rows[name] = {
            "federated": _mean_std([e.weighted_mean if e else None for e in fed]),
            "federated_n_per_fold": [e.n if e else None for e in fed],
            "centralized": _mean_std([e.get("metric") for e in cen]),
            "centralized_n_per_fold": [e.get("n") for e in cen],
        }
    return rows


def check_same_patients(dataset: str, folds: list[int]) -> dict[str, Any]:
    """Rebuild, in this process, the patient split of each fold the way the federation does
    (``RunConfig`` + ``run_cohort``, ``dataset_splits(n_folds=fold + 1)[fold]``) and the way
    ``fedlego centralized --folds N`` does (the preset's modalities, ``dataset_splits(n_folds=N)``),
    and compare them."""
    try:
        from fedlego.common.config import RunConfig
        from fedlego.common.data.presets import load_cohort, run_cohort
        from fedlego.common.data.scenarios import dataset_splits

        central = load_cohort(dataset)  # as `fedlego centralized --dataset` loads it: the preset's modalities
        central_splits = dataset_splits(central, n_folds=len(folds), seed=0)
        identical = []
        for fold in folds:
            config = RunConfig.from_flat({"dataset": dataset, "fold": fold})
            federated = run_cohort(config)
            split = dataset_splits(federated, n_folds=fold + 1, seed=config.seed)[fold]
            other = central_splits[fold]
            identical.append((split.train, split.validation, split.test) == (other.train, other.validation, other.test))
        return {"identical_per_fold": identical, "identical": all(identical), "error": None}
    except Exception as error:  # the check is reported, never fatal
        return {"identical_per_fold": [], "identical": None, "error": f"{type(error).__name__}: {error}"}


def _fold_ok(result: RunResults | None, fold: int) -> bool | None:
    """Whether the run's results.json reports the fold it was asked for."""
    return None if result is None else result.config.get("fold") == fold


def federated_vs_centralized(dataset: str, folds: list[int], run: _Runner) -> tuple[dict, list[RunResults | None]]:
    """One ``simulate`` per fold and one ``centralized --folds N``; the comparison entry and the
    federation runs' results documents (for the phase and byte tables)."""
    records: list[dict[str, Any]] = []
    results: list[RunResults | None] = []
    for fold in folds:
        arguments = ["--dataset", dataset, "--overlap", "1", "--set", f"fold={fold}", "--set", *NO_DISCLOSURE_CONTROL]
        record, result = run.simulate(f"{dataset} simulate fold {fold}", arguments, TIMEOUT["simulate"])
        record["fold"], record["fold_honoured"] = fold, _fold_ok(result, fold)
        records.append(record)
        results.append(result if record["status"] == "completed" else None)
    arguments = ["--dataset", dataset, "--folds", str(len(folds)), "--set", *NO_DISCLOSURE_CONTROL]
    central_record, central = run.centralized(f"{dataset} centralized", arguments, TIMEOUT["centralized"])
    central = central if central_record["status"] == "completed" else None
    metrics = [r.metric for r in results if r and r.metric is not None]
    metrics += [central["metric"]] if central and "metric" in central else []
    entry = {
        "dataset": dataset,
        "folds": folds,
        "metric": next(iter(metrics), "metric"),
        "simulate_runs": records,
        "centralized_run": central_record,
        "same_patients": check_same_patients(dataset, folds),
        "federated_sites": _sites(next((r for r in results if r), None)),
        "centralized_test_population": (central or {}).get("dataset"),
        "settings": _settings(next((r for r in results if r), None), central),
        "models": compare_metrics(results, central, folds),
    }
    return entry, results


FEDERATED_KEYS = ("weighting", "block_epochs", "block_rounds", "block_local_epochs", "fuse_rounds", "fuse_local_epochs")
"""The document's names of the federated settings; results.json spells the run-config keys with dashes."""
ROUND_KEYS = ("block_rounds", "block_local_epochs", "fuse_rounds", "fuse_local_epochs")


def _run_config(result: RunResults | None, keys: tuple[str, ...]) -> dict[str, Any]:
    """The run-config values of a federation (``block_rounds`` read as ``block-rounds``...); None when absent."""
    config = result.config if result else {}
    return {key: config.get(key.replace("_", "-")) for key in keys}


def _settings(result: RunResults | None, central: dict | None) -> dict[str, dict[str, Any]]:
    """The training settings that differ between the two sides, from each run's results."""
    centralized = (central or {}).get("config", {})
    return {
        "federated": _run_config(result, FEDERATED_KEYS),
        "centralized": {
            "weighting": centralized.get("weighting"),
            "block_epochs": centralized.get("training", {}).get("epochs"),
            "fuse_epochs": centralized.get("fuse", {}).get("epochs"),
        },
    }


def _sites(result: RunResults | None) -> dict[str, dict]:
    """Site -> modalities and test patients per modality, from a federation's results."""
    return {
        name: {"modalities": site.get("modalities"), "n_test": site.get("n_test")}
        for name, site in (result.sites if result else {}).items()
    }


def federated_summaries(doc: dict) -> dict[str, dict[str, dict[str, float]]]:
    """Per data set, ``{"merge": summary, "fuse": summary}`` of the federated side (``mean``, sample ``std``
    over folds, NaN when absent; ``n_folds``), for the quality section's table."""
    summaries = {}
    for entry in doc.get("federated_vs_centralized", []):
        summaries[entry["dataset"]] = {}
        for key in ("merge", "fuse"):
            stats = entry["models"].get(key, {}).get("federated") or {}
            summaries[entry["dataset"]][key] = {
                "mean": math.nan if stats.get("mean") is None else stats["mean"],
                "std": math.nan if stats.get("std") is None else stats["std"],
                "n_folds": stats.get("n_folds", 0),
            }
    return summaries


# -- time, memory and bytes ------------------------------------------------------------------
def phase_seconds(results: list[RunResults | None]) -> dict[str, dict[str, Any]]:
    """Per phase: mean +- std seconds over the completed federation runs."""
    phases: dict[str, list[float]] = {}
    for result in results:
        for name, phase in (result.phases if result else {}).items():
            phases.setdefault(name, []).append(phase.seconds)
    return {name: _mean_std(values) for name, values in phases.items()}


def _lego_phase(name: str) -> bool:
    return name != "describe" and not name.startswith("evaluate-")


def bytes_per_site(result: RunResults | None) -> dict[str, Any]:
    """Measured bytes (sent + received) per site per phase of one federation run, and the LegoMerge
    share per site: every phase except ``describe`` and ``evaluate-*``."""
    sites = sorted(result.sites) if result else []
    records = result.phases if result else {}
    phases = list(records)
    per_site: dict[str, dict[str, dict[str, int]]] = {site: {} for site in sites}
    for phase, record in records.items():
        for site, traffic in record.bytes.items():
            per_site.setdefault(site, {})[phase] = {"sent": traffic.sent, "received": traffic.received}
    lego = {
        site: {
            "per_phase": {p: t["sent"] + t["received"] for p, t in traffic.items() if _lego_phase(p)},
        }
        for site, traffic in per_site.items()
    }
    for value in lego.values():
        value["total"] = sum(value["per_phase"].values())
    return {
        "available": bool(records),
        "sites": _sites(result),
        "phases": phases,
        "per_site": per_site,
        "legomerge_phases": [p for p in phases if _lego_phase(p)],
        "legomerge_bytes_per_site": lego,
        "legomerge_total_bytes": sum(v["total"] for v in lego.values()),
        "rounds": _run_config(result, ROUND_KEYS),
    }


# -- scaling ---------------------------------------------------------------------------------
def _scaling_row(record: dict[str, Any], **layout: int) -> dict[str, Any]:
    keys = ("label", "command", "status", "wall_seconds", "peak_rss_bytes", "peak_processes", "site_count")
    row = {**layout, **{k: record.get(k) for k in keys}}
    row.update(
        load_average_1min_before=record["load_average_1min_before"],
        orchestrator_wall_seconds=record.get("orchestrator_wall_seconds"),
        phase_seconds=record.get("phase_seconds", {}),
    )
    if "output_tail" in record:
        row["output_tail"] = record["output_tail"]
    return row


def scaling_sites(targets: tuple[int, ...], run: _Runner) -> list[dict[str, Any]]:
    """Synthetic, 2 modalities, small settings, ``target`` sites."""
    rows = []
    for target in targets:
        per_modality, paired = SITE_LAYOUTS[target]
        arguments = ["--dataset", "synthetic", *SMALL, "--set", "synthetic-modalities=2"]
        arguments += ["--sites-per-modality", str(per_modality), "--paired-sites", str(paired)]
        record, _ = run.simulate(f"scaling {target} sites", arguments, TIMEOUT["scaling"])
        rows.append(_scaling_row(record, sites=target, modalities=2, sites_per_modality=per_modality, paired=paired))
    return rows


def scaling_modalities(counts: tuple[int, ...], run: _Runner) -> list[dict[str, Any]]:
    """Synthetic, ``count`` modalities, one site per modality plus one paired site, small settings."""
    rows = []
    for count in counts:
        arguments = ["--dataset", "synthetic", *SMALL, "--set", f"synthetic-modalities={count}"]
        arguments += ["--sites-per-modality", "1", "--paired-sites", "1"]
        record, _ = run.simulate(f"scaling {count} modalities", arguments, TIMEOUT["scaling"])
        rows.append(_scaling_row(record, sites=count + 1, modalities=count, sites_per_modality=1, paired=1))
    return rows


# -- the run ---------------------------------------------------------------------------------
def machine_description() -> str:
    """CPU model, cores, RAM, Python and torch versions."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return (
        f"{platform.machine()} {cpu}, {os.cpu_count()} cores, {memory / 2**30:.0f} GiB RAM, "
        f"Python {platform.python_version()}, torch {torch_version}, CPU only"
    )


def _plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"datasets": ["tcga-acc"], "folds": [0], "sites": (2,), "modalities": (2,), "cut": QUICK_CUT}
    return {
        "datasets": list(DATASETS),
        "folds": list(range(FOLDS)),
        "sites": SCALING_SITES,
        "modalities": SCALING_MODALITIES,
        "cut": SCALING_CUT,
    }


def run_cost(work: Path, quick: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run every command of the cost section (folders under ``work``) and return its JSON document."""
    work.mkdir(parents=True, exist_ok=True)
    plan, start = _plan(quick), time.perf_counter()
    run = _Runner(work, log)
    comparisons, timing, runs, first_tcga = [], {}, [], None
    for dataset in plan["datasets"]:
        log(f"cost: {dataset}, federated ({len(plan['folds'])} folds) vs centralized")
        entry, results = federated_vs_centralized(dataset, plan["folds"], run)
        comparisons.append(entry)
        runs += [*entry["simulate_runs"], entry["centralized_run"]]
        timing[dataset] = _timing(entry, results)
        if dataset == "tcga-acc":
            first_tcga = results[0]
    log(f"cost: scaling, sites {list(plan['sites'])}, modalities {list(plan['modalities'])}")
    sites, modalities = [], []
    for index in range(max(len(plan["sites"]), len(plan["modalities"]))):  # alternate: a budget cut hits both
        sites += scaling_sites(plan["sites"][index : index + 1], run)
        modalities += scaling_modalities(plan["modalities"][index : index + 1], run)
    return {
        "section": "cost",
        "machine": machine_description(),
        "date": datetime.date.today().isoformat(),
        "quick": quick,
        "plan": {**plan, "sites": list(plan["sites"]), "modalities": list(plan["modalities"])},
        "budget_seconds": BUDGET_SECONDS,
        "wall_seconds": time.perf_counter() - start,
        "federated_vs_centralized": comparisons,
        "time": timing,
        "runs": [_run_row(r) for r in [*runs, *sites, *modalities]],
        "bytes": {"run": "tcga-acc simulate fold 0", **bytes_per_site(first_tcga)},
        "scaling": {
            "settings": " ".join(SMALL),
            "timeout_seconds": TIMEOUT["scaling"],
            "sites": sites,
            "modalities": modalities,
        },
    }


def _timing(entry: dict, results: list[RunResults | None]) -> dict[str, Any]:
    done = [r["wall_seconds"] for r in entry["simulate_runs"] if r["status"] == "completed"]
    return {
        "phase_seconds": phase_seconds(results),
        "simulate_wall_seconds": _mean_std(done),
        "orchestrator_wall_seconds": _mean_std([r.wall_seconds for r in results if r]),
        "centralized_wall_seconds": entry["centralized_run"]["wall_seconds"],
        "centralized_pipeline_seconds": entry["centralized_run"].get("orchestrator_wall_seconds"),
    }


def _run_row(record: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "label",
        "command",
        "status",
        "wall_seconds",
        "peak_rss_bytes",
        "peak_processes",
        "load_average_1min_before",
    )
    return {k: record.get(k) for k in keys}
