"""Benchmark suite, cost section: federated vs centralized metrics over folds, wall time, peak memory,
bytes per site per phase, and how the simulated federation scales with sites and modalities.

Every number comes from a real ``python -m fedlego.cli ...`` subprocess run inside :func:`run_cost`,
one at a time (so wall time includes Python, Flower and Ray start-up), with the memory of its whole
process tree polled every 0.25 s. The suite (``bench/suite.py``) calls :func:`run_cost`, then
:func:`cost_markdown` and :func:`cost_figures`.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from importlib import metadata
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

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
TIMEOUT = {"simulate": 240.0, "centralized": 300.0, "scaling": 240.0}
BUDGET_SECONDS = 13 * 60  # runs not started by then are recorded as skipped
PAGE = os.sysconf("SC_PAGE_SIZE")
POLL_SECONDS = 0.25
TAIL_LINES = 15


# -- process-tree memory ---------------------------------------------------------------------
def _processes() -> dict[int, int]:
    """pid -> ppid of every process (Linux /proc)."""
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        parents[int(entry.name)] = int(fields[1])
    return parents


def _has_environment(pid: int, needle: bytes) -> bool:
    try:
        return needle in (Path("/proc") / str(pid) / "environ").read_bytes()
    except OSError:
        return False


def _rss(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _descendants(roots: set[int], children: dict[int, list[int]]) -> set[int]:
    tree, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in tree:
            tree.add(pid)
            stack += children.get(pid, [])
    return tree


def process_tree(root: int, needle: bytes | None) -> set[int]:
    """``root``, its descendants (ppid chains) and, when ``needle`` is given, every process whose
    environment contains it, with their descendants (Flower and Ray re-parent or detach helpers)."""
    parents = _processes()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    roots = {root} if root in parents else set()
    if needle is not None:
        mine = os.getpid()
        roots |= {pid for pid in parents if pid != mine and _has_environment(pid, needle)}
    return _descendants(roots, children)


def run_measured(command: list[str], flwr_home: Path | None, timeout: float) -> dict[str, Any]:
    """Run ``command`` in its own session and poll the RSS of its process tree every 0.25 s; on
    timeout interrupt it (SIGINT, so the CLI stops its Flower processes), then kill what is left of
    the tree by pid. Returns exit code, wall time, peak tree RSS and the output lines."""
    needle = None if flwr_home is None else f"FLWR_HOME={flwr_home}".encode() + b"\0"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    state = {"peak_bytes": 0, "peak_processes": 0, "timed_out": False}
    done = threading.Event()

    def monitor() -> None:
        while not done.is_set():
            tree = process_tree(process.pid, needle)
            total = sum(_rss(pid) for pid in tree)
            if total > state["peak_bytes"]:
                state["peak_bytes"], state["peak_processes"] = total, len(tree)
            if not state["timed_out"] and time.perf_counter() - start > timeout:
                state["timed_out"] = True
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT)
            done.wait(POLL_SECONDS)

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    assert process.stdout is not None
    lines = [line.rstrip("\n") for line in process.stdout]
    try:
        process.wait(timeout=90 if state["timed_out"] else None)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    wall = time.perf_counter() - start
    done.set()
    thread.join()
    for pid in process_tree(process.pid, needle) - {process.pid}:  # whatever of this run is still alive
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return {
        "returncode": process.returncode,
        "wall_seconds": wall,
        "timed_out": state["timed_out"],
        "peak_rss_bytes": state["peak_bytes"],
        "peak_processes": state["peak_processes"],
        "output": lines,
    }


# -- one fedlego command ---------------------------------------------------------------------
class _Runner:
    """Runs ``fedlego`` commands one at a time under a shared deadline, naming each output folder."""

    def __init__(self, work: Path, log: Callable[[str], None], budget: float = BUDGET_SECONDS) -> None:
        self.work, self.log, self.budget = work, log, budget
        self.deadline = time.monotonic() + budget
        self.count = 0

    def __call__(self, label: str, arguments: list[str], timeout: float) -> tuple[dict[str, Any], dict | None]:
        """The run's record (for the document) and its results.json (None when it wrote none)."""
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
        (out / "results.json").unlink(missing_ok=True)  # never read a previous run's results
        try:
            measured = run_measured(command, flwr_home, timeout)
        except OSError as error:
            return {**record, "status": f"failed: {error}", **_EMPTY_MEASUREMENT}, None
        results = _read_json(out / "results.json")
        record.update({k: v for k, v in measured.items() if k != "output"})
        record["status"] = _status(measured, results)
        record["timeout_seconds"] = timeout
        record["orchestrator_wall_seconds"] = (results or {}).get("wall_seconds")
        record["phase_seconds"] = {k: v["seconds"] for k, v in (results or {}).get("phases", {}).items()}
        record["site_count"] = _site_count(measured["output"])
        if record["status"] != "completed":
            record["output_tail"] = measured["output"][-TAIL_LINES:]
        self.log(f"  -> {record['status']}, {measured['wall_seconds']:.1f} s, {_mib(measured['peak_rss_bytes'])}")
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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _status(measured: dict[str, Any], results: dict | None) -> str:
    """completed, timed out, or failed: why."""
    if measured["timed_out"]:
        return f"failed: timed out after {measured['wall_seconds']:.0f} s"
    if results is None:
        return f"failed: exit {measured['returncode']}, no results.json"
    if results.get("status", "completed") != "completed":
        return f"failed: run status {results['status']}"
    if measured["returncode"] != 0:
        return f"failed: exit {measured['returncode']}"
    return "completed"


def _site_count(lines: list[str]) -> int | None:
    """The site count ``fedlego simulate`` prints on its first line."""
    for line in lines:
        if line.startswith("fedlego simulate:") and " sites (" in line:
            with suppress(ValueError, IndexError):
                return int(line.split(" sites (")[0].rsplit(" ", 1)[1])
    return None


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


def _model_names(federated: list[dict | None], centralized: dict | None) -> list[str]:
    """Blocks (centralized order first), then merge and fuse."""
    first = next(iter((centralized or {}).get("folds", [])), {})
    names = [n for n in first.get("models", {}) if n.startswith("block:")]
    for result in federated:
        names += [n for n in (result or {}).get("metrics", {}).get("merge", {}) if n.startswith("block:")]
    return [*dict.fromkeys(names), "merge", "fuse"]


def _federated_entry(result: dict | None, name: str) -> dict:
    phase = "fuse" if name == "fuse" else "merge"
    return (result or {}).get("metrics", {}).get(phase, {}).get(name) or {}


def _centralized_entry(centralized: dict | None, fold: int, name: str) -> dict:
    folds = (centralized or {}).get("folds", [])
    return folds[fold].get("models", {}).get(name, {}) if fold < len(folds) else {}


def compare_metrics(federated: list[dict | None], centralized: dict | None, folds: list[int]) -> dict[str, dict]:
    """Per model: federated sample-weighted mean over sites and centralized complete-case metric,
    each as mean +- std over folds, with the test counts per fold."""
    rows = {}
    for name in _model_names(federated, centralized):
        fed = [_federated_entry(result, name) for result in federated]
        cen = [_centralized_entry(centralized, k, name) for k in folds]
        rows[name] = {
            "federated": _mean_std([e.get("weighted_mean") for e in fed]),
            "federated_n_per_fold": [e.get("n") for e in fed],
            "centralized": _mean_std([e.get("metric") for e in cen]),
            "centralized_n_per_fold": [e.get("n") for e in cen],
        }
    return rows


def check_same_patients(dataset: str, folds: list[int]) -> dict[str, Any]:
    """Rebuild, in this process, the patient split of each fold the way the federation does
    (``FederationSettings`` + ``scenario_dataset``, ``dataset_splits(n_folds=fold + 1)[fold]``) and the
    way ``fedlego centralized --folds N`` does (``dataset_splits(n_folds=N)``), and compare them."""
    try:
        from fedlego.cli import PRESETS
        from fedlego.common.data.bundled import load_dataset
        from fedlego.common.data.scenarios import dataset_splits
        from fedlego.common.federation import FederationSettings, scenario_dataset

        central = load_dataset(dataset, **({"task": "survival"} if dataset == "pbc" else {}))  # as the CLI loads it
        central = central.subset(central.patient_ids(), PRESETS[dataset]["modalities"])
        central_splits = dataset_splits(central, n_folds=len(folds), seed=0)
        identical = []
        for fold in folds:
            settings = FederationSettings(dataset=dataset, fold=fold)
            federated = scenario_dataset(settings)
            split = dataset_splits(federated, n_folds=fold + 1, seed=settings.seed)[fold]
            other = central_splits[fold]
            identical.append((split.train, split.validation, split.test) == (other.train, other.validation, other.test))
        return {"identical_per_fold": identical, "identical": all(identical), "error": None}
    except Exception as error:  # the check is reported, never fatal
        return {"identical_per_fold": [], "identical": None, "error": f"{type(error).__name__}: {error}"}


def _fold_ok(result: dict | None, fold: int) -> bool | None:
    """Whether the run's results.json reports the fold it was asked for."""
    return None if result is None else result.get("config", {}).get("fold") == fold


def federated_vs_centralized(dataset: str, folds: list[int], run: _Runner) -> tuple[dict, list[dict | None]]:
    """One ``simulate`` per fold and one ``centralized --folds N``; the comparison entry and the
    federation runs' results documents (for the phase and byte tables)."""
    records, results = [], []
    for fold in folds:
        arguments = ["simulate", "--scenario", dataset, "--overlap", "1", "--set", f"fold={fold}"]
        record, result = run(f"{dataset} simulate fold {fold}", arguments, TIMEOUT["simulate"])
        record["fold"], record["fold_honoured"] = fold, _fold_ok(result, fold)
        records.append(record)
        results.append(result if record["status"] == "completed" else None)
    arguments = ["centralized", "--dataset", dataset, "--folds", str(len(folds))]
    central_record, central = run(f"{dataset} centralized", arguments, TIMEOUT["centralized"])
    central = central if central_record["status"] == "completed" else None
    entry = {
        "dataset": dataset,
        "folds": folds,
        "metric": next((r["metric"] for r in [*results, central] if r and "metric" in r), "metric"),
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


def _settings(result: dict | None, central: dict | None) -> dict[str, dict[str, Any]]:
    """The training settings that differ between the two sides, from each run's results."""
    federated = (result or {}).get("config", {})
    centralized = (central or {}).get("config", {})
    return {
        "federated": {key: federated.get(key) for key in FEDERATED_KEYS},
        "centralized": {
            "weighting": centralized.get("weighting"),
            "block_epochs": centralized.get("training", {}).get("epochs"),
            "fuse_epochs": centralized.get("fuse", {}).get("epochs"),
        },
    }


def _sites(result: dict | None) -> dict[str, dict]:
    """Site -> modalities and test patients per modality, from a federation's results."""
    return {
        name: {"modalities": site.get("modalities"), "n_test": site.get("n_test")}
        for name, site in (result or {}).get("sites", {}).items()
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
def phase_seconds(results: list[dict | None]) -> dict[str, dict[str, Any]]:
    """Per phase: mean +- std seconds over the completed federation runs."""
    phases: dict[str, list[float]] = {}
    for result in results:
        for name, phase in (result or {}).get("phases", {}).items():
            phases.setdefault(name, []).append(phase["seconds"])
    return {name: _mean_std(values) for name, values in phases.items()}


def _lego_phase(name: str) -> bool:
    return name != "describe" and not name.startswith("evaluate-")


def bytes_per_site(result: dict | None) -> dict[str, Any]:
    """Measured bytes (sent + received) per site per phase of one federation run, and the LegoMerge
    share per site: every phase except ``describe`` and ``evaluate-*``."""
    result = result or {}
    sites = sorted(result.get("sites", {}))
    phases = list(result.get("phases", {}))
    per_site = {site: {} for site in sites}
    for phase in phases:
        for site, traffic in result["phases"][phase].get("bytes", {}).items():
            per_site.setdefault(site, {})[phase] = {"sent": traffic["sent"], "received": traffic["received"]}
    lego = {
        site: {
            "per_phase": {p: t["sent"] + t["received"] for p, t in traffic.items() if _lego_phase(p)},
        }
        for site, traffic in per_site.items()
    }
    for value in lego.values():
        value["total"] = sum(value["per_phase"].values())
    config = result.get("config", {})
    return {
        "available": bool(result.get("phases")),
        "sites": _sites(result),
        "phases": phases,
        "per_site": per_site,
        "legomerge_phases": [p for p in phases if _lego_phase(p)],
        "legomerge_bytes_per_site": lego,
        "legomerge_total_bytes": sum(v["total"] for v in lego.values()),
        "rounds": {
            k: config.get(k) for k in ("block_rounds", "block_local_epochs", "fuse_rounds", "fuse_local_epochs")
        },
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
        arguments = ["simulate", "--scenario", "synthetic", *SMALL, "--set", "synthetic-modalities=2"]
        arguments += ["--sites-per-modality", str(per_modality), "--paired-sites", str(paired)]
        record, _ = run(f"scaling {target} sites", arguments, TIMEOUT["scaling"])
        rows.append(_scaling_row(record, sites=target, modalities=2, sites_per_modality=per_modality, paired=paired))
    return rows


def scaling_modalities(counts: tuple[int, ...], run: _Runner) -> list[dict[str, Any]]:
    """Synthetic, ``count`` modalities, one site per modality plus one paired site, small settings."""
    rows = []
    for count in counts:
        arguments = ["simulate", "--scenario", "synthetic", *SMALL, "--set", f"synthetic-modalities={count}"]
        arguments += ["--sites-per-modality", "1", "--paired-sites", "1"]
        record, _ = run(f"scaling {count} modalities", arguments, TIMEOUT["scaling"])
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


def _timing(entry: dict, results: list[dict | None]) -> dict[str, Any]:
    done = [r["wall_seconds"] for r in entry["simulate_runs"] if r["status"] == "completed"]
    return {
        "phase_seconds": phase_seconds(results),
        "simulate_wall_seconds": _mean_std(done),
        "orchestrator_wall_seconds": _mean_std([r["wall_seconds"] for r in results if r]),
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
        "Each fold K is one `fedlego simulate --scenario D --overlap 1 --set fold=K` run (overlap 1: each "
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
        "## Cost: setup",
        "",
        f"Machine: {doc['machine']}. Date: {doc['date']}. {mode.capitalize()}. Every command runs as a "
        "subprocess, one at a time; wall times include Python, Flower and Ray start-up.",
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
