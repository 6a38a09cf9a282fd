"""Benchmark: the centralized MM-Lego table on bundled TCGA-ACC and PBC (5 patient-level folds).

Runs ``fedlego centralized`` for each dataset as a subprocess (so wall time includes start-up),
then writes ``OUT/centralized.json`` and ``OUT/centralized.md`` with every row of the table
(mean ± std over folds), the uplifts and the wall time, plus the machine and the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedlego.common.centralized import format_table

RUNS = {
    "tcga-acc": ["--dataset", "tcga-acc"],
    "pbc": ["--dataset", "pbc"],
}


def run(name: str, arguments: list[str], folds: int, work: Path) -> dict:
    """One ``fedlego centralized`` run; its results document plus the measured wall time."""
    out = work / name
    command = [sys.executable, "-m", "fedlego.cli", "centralized", *arguments, "--folds", str(folds), "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    document = json.loads((out / "results.json").read_text())
    pretty = " ".join(["fedlego", *command[3:-2], "--out", "DIR"])
    return {"command": pretty, "process_wall_seconds": wall, "results": document}


def markdown(records: dict[str, dict], machine: str, date: str) -> str:
    """The benchmark page."""
    lines = [
        "# Centralized MM-Lego benchmark",
        "",
        f"Machine: {machine}. Date: {date}. Produced by `make bench` (`bench/centralized.py`).",
        "Test metric on the patients of each test fold holding every modality; mean ± sample std",
        "over 5 patient-level random sub-sampling folds (seeds 0-4). Nothing here was tuned on test folds.",
        "",
    ]
    for name, record in records.items():
        doc = record["results"]
        title = f"## {name}: {doc['dataset']['task']}, {doc['dataset']['n_patients']} patients"
        lines += [title, "", f"Command: `{record['command']}`", "", "```"]
        lines.append(format_table(doc["summary"], doc["metric"], f"{doc['metric']} on test folds"))
        summary = doc["summary"]
        best_block = max(v["mean"] for k, v in summary.items() if k.startswith("block:"))
        merge, fuse = summary["merge"]["mean"], summary["fuse"]["mean"]
        lines += [
            "```",
            "",
            f"Targets: LegoMerge >= best block: {'met' if merge >= best_block else 'MISSED'} "
            f"({merge:.3f} vs {best_block:.3f}); LegoFuse >= LegoMerge: "
            f"{'met' if fuse >= merge else 'MISSED'} ({fuse:.3f} vs {merge:.3f}).",
            "",
            f"Wall time: {record['process_wall_seconds']:.1f} s for the whole command "
            f"({doc['wall_seconds']:.1f} s inside the pipeline).",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, CPU only"
    date = datetime.date.today().isoformat()
    with tempfile.TemporaryDirectory() as work:
        records = {name: run(name, arguments, args.folds, Path(work)) for name, arguments in RUNS.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        name: {
            "command": r["command"],
            "wall_seconds": r["process_wall_seconds"],
            "metric": r["results"]["metric"],
            "summary": r["results"]["summary"],
            "uplift_merge_vs_best_block_percent": r["results"]["uplift_merge_vs_best_block_percent"],
            "uplift_fuse_vs_best_block_percent": r["results"]["uplift_fuse_vs_best_block_percent"],
            "folds": r["results"]["folds"],
        }
        for name, r in records.items()
    }
    document = {"machine": machine, "date": date, "runs": summary}
    (args.out / "centralized.json").write_text(json.dumps(document, indent=2))
    (args.out / "centralized.md").write_text(markdown(records, machine, date))
    print((args.out / "centralized.md").read_text())


if __name__ == "__main__":
    main()
