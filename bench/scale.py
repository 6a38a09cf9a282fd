"""Scale: how a federation's time and memory grow with the cohort, a 15,000-patient cohort in a
loopback deployment with the defaults, and what the block step budget costs in quality.

    python bench/scale.py --out docs/benchmarks [--quick]

The cohort is the synthetic generator's: a baseline table (16 columns) and a long, sparse lab
series (8 variables, 1-24 visits a patient in the first year, each variable measured at a visit
with probability 0.05: about 17 rows a patient, 250,000 rows at 15,000 patients), written as one
pooled site folder (site.json, labels.csv, baseline.csv, labs.csv), the way a user's data arrive.

1. **Simulated federation** at 1,000, 10,000 and 20,000 patients: ``fedlego simulate --data
   FOLDER --paired-sites 3 --paired-fraction 1`` (three hospitals holding both modalities) with the
   default settings, as a subprocess whose whole process tree's memory is polled every 0.25 s
   (``bench/measure.py``). Per phase: seconds (results.json) and the peak memory of the process
   tree while the phase ran (phase start/end times in results.json against the memory samples).
2. **Loopback deployment** of 15,000 patients with the defaults: ``fedlego certs``, ``export-sites
   --data`` into three site folders, ``fedlego superlink --keys``, three ``fedlego site --keys``
   and ``fedlego run --certs --set min-sites=3``: TLS, node authentication, signed packages, every
   process on 127.0.0.1. Status, time per phase and the progress lines the coordinator printed.
3. **Step budget** (``max-steps``, default 2000): blocks trained on 5,000 patients (3 folds) with
   the budget and without it (``max-steps = 0``: 50 epochs, patience 10); test c-index and
   training seconds, paired per fold and modality.

Writes ``OUT/scale.json`` and ``OUT/scale.md``. ``--quick`` runs tiny sizes to check the path.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedlego.common.config import ModelConfig, TrainConfig
from fedlego.common.data.scenarios import SiteSpec, dataset_splits
from fedlego.common.data.sitefolder import write_site_folder
from fedlego.common.data.synthetic import SyntheticModality, make_synthetic
from fedlego.common.data.tensors import fit_preprocessors, make_tensor_set, task_for
from fedlego.common.workflow import evaluate, train_block, unimodal_forward
from fedlego.launcher import free_port, stop_process_group
from fedlego.server.results import RunResults
from fedlego_bench.measure import run_measured
from fedlego_bench.standalone import command_line, write_page
from fedlego_bench.weighting import paired_difference

MODALITIES = (
    SyntheticModality("baseline", "tabular", 1.0, 0.0, 16),
    SyntheticModality("labs", "timeseries", 1.0, 0.0, 8, max_visits=24, observed=0.05),
)
SITES = ("paired-0", "paired-1", "paired-2")
SPLIT = ["--layout", "modality-sites", "--paired-sites", "3", "--paired-fraction", "1"]
QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}
MIB = 1024 * 1024


def fedlego(*args: str) -> list[str]:
    """The command line of ``fedlego ARGS`` in this Python environment."""
    return [sys.executable, "-m", "fedlego.cli", *args]


def write_cohort(n_patients: int, folder: Path) -> dict[str, Any]:
    """The synthetic cohort of ``n_patients`` as one pooled site folder; its size."""
    dataset = make_synthetic(n_patients, list(MODALITIES), seed=0)
    write_site_folder(dataset, SiteSpec("cohort", list(dataset.modalities), dataset.patient_ids()), None, folder)
    labs = dataset.modalities["labs"].table
    return {
        "patients": n_patients,
        "lab_rows": len(labs),
        "max_visits": int(labs.groupby("id")["time"].nunique().max()),
    }


def test_metrics(results: RunResults) -> dict[str, float]:
    """The test metric (sample-weighted over sites) of the blocks, the merge and the fuse."""
    metrics = {name: entry.weighted_mean for name, entry in results.metrics.get("merge", {}).items()}
    if "fuse" in results.metrics.get("fuse", {}):
        metrics["fuse"] = results.metrics["fuse"]["fuse"].weighted_mean
    return metrics


def phase_memory(results: RunResults, trace: list[tuple[float, int]]) -> dict[str, dict[str, float]]:
    """Per phase: seconds and the peak process-tree memory sampled while it ran (MiB)."""
    table = {}
    for name, phase in results.phases.items():
        inside = [b for t, b in trace if phase.started is not None and phase.started <= t <= (phase.ended or t)]
        table[name] = {"seconds": phase.seconds, "peak_mib": max(inside) / MIB if inside else float("nan")}
    return table


def simulated_run(n_patients: int, work: Path, timeout: float) -> dict[str, Any]:
    """One simulated federation on a pooled folder of ``n_patients`` with the defaults."""
    folder, out = work / f"cohort-{n_patients}", work / f"simulate-{n_patients}"
    cohort = write_cohort(n_patients, folder)
    trace: list[tuple[float, int]] = []
    command = fedlego("simulate", "--data", str(folder), *SPLIT, "--out", str(out))
    measured = run_measured(command, out / ".flower", timeout, trace)
    record: dict[str, Any] = {
        **cohort,
        "returncode": measured["returncode"],
        "wall_seconds": measured["wall_seconds"],
        "peak_mib": measured["peak_rss_bytes"] / MIB,
    }
    results = RunResults.read(out / "results.json") if (out / "results.json").exists() else None
    if results is None:
        record["status"] = "no results"
        record["output_tail"] = measured["output"][-20:]
        return record
    record["status"] = results.status
    record["phases"] = phase_memory(results, trace)
    record["metrics"] = test_metrics(results)
    return record


def _start(command: list[str], log: Path, home: Path) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stream:
        return subprocess.Popen(
            command,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env={**os.environ, **QUIET},
            cwd=home,
            start_new_session=True,
        )


def _wait_for(text: str, log: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in (log.read_text() if log.exists() else ""):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{log.name}: exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    raise RuntimeError(f"{log.name}: no {text!r} within {timeout:.0f} s")


def deployment_run(n_patients: int, work: Path, timeout: float) -> dict[str, Any]:
    """The cohort cut into three site folders, run as a secure loopback deployment with the defaults."""
    folder, sites, certs, out, logs = (
        work / f"deploy-{n_patients}" / p for p in ("cohort", "sites", "certs", "out", "logs")
    )
    logs.mkdir(parents=True)
    cohort = write_cohort(n_patients, folder)
    site_args = [a for s in SITES for a in ("--site", s)]
    subprocess.run(
        fedlego("certs", "--out", str(certs), *site_args, "--server-name", "127.0.0.1"),
        check=True,
        env={**os.environ, **QUIET},
        capture_output=True,
    )
    subprocess.run(
        fedlego("export-sites", "--data", str(folder), *SPLIT, "--out", str(sites)),
        check=True,
        env={**os.environ, **QUIET},
        capture_output=True,
    )
    port = free_port()
    processes: list[subprocess.Popen] = []
    record: dict[str, Any] = dict(cohort)
    try:
        superlink = _start(
            fedlego("superlink", "--port", str(port), "--home", str(work / "superlink"), "--certs", str(certs)),
            logs / "superlink.log",
            work / "superlink",
        )
        processes.append(superlink)
        _wait_for("fedlego superlink: ready;", logs / "superlink.log", superlink, 120)
        for site in SITES:
            command = fedlego(
                "site",
                "--superlink",
                f"127.0.0.1:{port}",
                "--data",
                str(sites / site),
                "--keys",
                str(certs / "sites" / site),
                "--home",
                str(work / "homes" / site),
            )
            processes.append(_start(command, logs / f"{site}.log", work / "homes" / site))
        start = time.perf_counter()
        run = subprocess.run(
            fedlego(
                "run",
                "--superlink",
                f"127.0.0.1:{port}",
                "--certs",
                str(certs),
                "--out",
                str(out),
                "--set",
                "min-sites=3",
                "--timeout",
                str(timeout),
            ),
            env={**os.environ, **QUIET},
            capture_output=True,
            text=True,
        )
        record["wall_seconds"] = time.perf_counter() - start
        record["returncode"] = run.returncode
        record["threads_line"] = next(
            (line for line in (logs / "paired-0.log").read_text().splitlines() if "training threads" in line), ""
        )
    finally:
        for process in reversed(processes):
            stop_process_group(process, grace=30.0)  # SIGTERM: the CLI stops its Flower processes
    coordinator_log = (
        (out / ".flower" / "run.log").read_text() if (out / ".flower" / "run.log").exists() else run.stdout
    )
    record["progress_lines"] = [line.strip() for line in coordinator_log.splitlines() if "still working" in line]
    results = RunResults.read(out / "results.json") if (out / "results.json").exists() else None
    record["status"] = results.status if results else "no results"
    if results is not None:
        record["phases"] = {name: {"seconds": phase.seconds} for name, phase in results.phases.items()}
        record["failures"] = [f"{f.site} {f.phase}: {f.reason}" for f in results.failures]
        record["metrics"] = test_metrics(results)
    else:
        record["output_tail"] = (run.stdout + run.stderr).splitlines()[-30:]
    return record


def step_budget(n_patients: int, folds: int) -> dict[str, Any]:
    """Blocks with the default step budget and without one, on the same folds: c-index and seconds."""
    dataset = make_synthetic(n_patients, list(MODALITIES), seed=0)
    rows = []
    for split in dataset_splits(dataset, folds, seed=0):
        preprocessors = fit_preprocessors(dataset, split.train)
        train, validation, test = (
            make_tensor_set(dataset, preprocessors, ids) for ids in (split.train, split.validation, split.test)
        )
        task = task_for(dataset.labels, split.train)
        for modality, data in dataset.modalities.items():
            row: dict[str, Any] = {"fold": split.fold, "modality": modality}
            for label, config in (("budget", TrainConfig()), ("none", replace(TrainConfig(), max_steps=0))):
                start = time.perf_counter()
                block, report = train_block(
                    modality,
                    data.kind,
                    train,
                    validation,
                    task,
                    ModelConfig(),
                    config,
                    preprocessors[modality].to_dict(),
                )
                seconds = time.perf_counter() - start
                held = test.restrict([modality])
                metric = evaluate(block, held, task, unimodal_forward(block))["metric"]
                row[label] = {"c_index": metric, "seconds": seconds, "epochs": len(report.train_loss)}
            rows.append(row)
            print(f"  step budget fold {split.fold} {modality}: {row}", file=sys.stderr, flush=True)
    return {
        "patients": n_patients,
        "rows": rows,
        "difference": paired_difference([r["budget"]["c_index"] - r["none"]["c_index"] for r in rows]),
        "speedup": sum(r["none"]["seconds"] for r in rows) / sum(r["budget"]["seconds"] for r in rows),
    }


def _phase_table(runs: list[dict[str, Any]], with_memory: bool) -> list[str]:
    names = list(dict.fromkeys(n for r in runs for n in r.get("phases", {})))
    header = "| phase | " + " | ".join(f"{r['patients']:,} patients" for r in runs) + " |"
    lines = [header, "|---|" + "---|" * len(runs)]
    for name in names:
        cells = []
        for run in runs:
            phase = run.get("phases", {}).get(name)
            if phase is None:
                cells.append("-")
            elif with_memory:
                cells.append(f"{phase['seconds']:.1f} s, {phase['peak_mib']:,.0f} MiB")
            else:
                cells.append(f"{phase['seconds']:.1f} s")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(document: dict[str, Any]) -> str:
    """The page: the three sections with the command and the machine."""
    simulated = document["simulated"]
    lines = [
        "# Scale: cohort size, a 15,000-patient deployment, the step budget",
        "",
        f"Command: `{document['command']}` ({document['date']}, {document['machine']}; "
        f"{document['wall_seconds'] / 60:.1f} min in all). Cohort: synthetic, a 16-column baseline table and a "
        "sparse lab series (8 variables, 1-24 visits a patient, each variable measured at a visit with "
        "probability 0.05), written as one pooled site folder; default settings everywhere.",
        "",
        "## Simulated federation (three hospitals holding both modalities)",
        "",
        "`fedlego simulate --data FOLDER --paired-sites 3 --paired-fraction 1`, Flower's simulation engine "
        "(Ray), memory of the whole process tree (Ray workers included) polled every 0.25 s.",
        "",
        "| patients | lab rows | status | wall | peak memory | merge c-index |",
        "|---|---|---|---|---|---|",
    ]
    for run in simulated:
        metric = run.get("metrics", {}).get("merge", float("nan"))
        lines.append(
            f"| {run['patients']:,} | {run['lab_rows']:,} | {run['status']} | {run['wall_seconds']:.0f} s | "
            f"{run['peak_mib']:,.0f} MiB | {metric:.3f} |"
        )
    lines += ["", "Per phase (seconds, peak memory while it ran):", "", *_phase_table(simulated, True), ""]
    deployment = document.get("deployment")
    if deployment:
        lines += [
            f"## Loopback deployment, {deployment['patients']:,} patients ({deployment['lab_rows']:,} lab rows)",
            "",
            "Three `fedlego site --keys` processes and the SuperLink on 127.0.0.1 (TLS, node authentication, "
            f"signed packages), `fedlego run --set min-sites=3`, all other settings default. Status "
            f"**{deployment['status']}** in {deployment.get('wall_seconds', float('nan')):.0f} s; "
            f"a site's start line: `{deployment.get('threads_line', '')}`.",
            "",
            *_phase_table([deployment], False),
            "",
            "Progress lines the coordinator printed while phases waited:",
            "",
            *([f"    {line}" for line in deployment.get("progress_lines", [])[:12]] or ["    (none)"]),
            "",
        ]
        if deployment.get("failures"):
            lines += ["Failures: " + "; ".join(deployment["failures"]), ""]
    budget = document["step_budget"]
    diff = budget["difference"]
    lines += [
        f"## Step budget ({budget['patients']:,} patients, blocks, paired per fold and modality)",
        "",
        "| fold | modality | c-index budget | c-index none | epochs budget / none | seconds budget / none |",
        "|---|---|---|---|---|---|",
    ]
    for row in budget["rows"]:
        b, n = row["budget"], row["none"]
        lines.append(
            f"| {row['fold']} | {row['modality']} | {b['c_index']:.3f} | {n['c_index']:.3f} | "
            f"{b['epochs']} / {n['epochs']} | {b['seconds']:.0f} / {n['seconds']:.0f} |"
        )
    lines += [
        "",
        f"budget - none: {diff['mean']:+.4f} c-index [95 % t-interval {diff['low']:+.4f}, {diff['high']:+.4f}] over "
        f"{diff['n']} pairs; training {budget['speedup']:.1f}x faster with the budget.",
        "",
    ]
    return "\n".join(lines)


def machine() -> str:
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--quick", action="store_true", help="tiny cohorts: checks the path, not the figures")
    args = parser.parse_args(argv)
    sizes, deployed, budget_size, folds = (
        ((200, 400), 300, 400, 2) if args.quick else ((1000, 10000, 20000), 15000, 5000, 3)
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedlego-scale-") as folder:
        work = Path(folder)
        simulated = []
        for size in sizes:
            print(f"simulated federation, {size} patients ...", file=sys.stderr, flush=True)
            simulated.append(simulated_run(size, work, timeout=3600))
        print(f"loopback deployment, {deployed} patients ...", file=sys.stderr, flush=True)
        deployment = deployment_run(deployed, work, timeout=3600)
    print("step budget ...", file=sys.stderr, flush=True)
    budget = step_budget(budget_size, folds)
    document = {
        "command": command_line("scale.py", argv),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "simulated": simulated,
        "deployment": deployment,
        "step_budget": budget,
        "wall_seconds": time.perf_counter() - start,
    }
    write_page(args.out, "scale", document, markdown)


if __name__ == "__main__":
    main()
