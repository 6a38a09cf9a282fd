"""Deployed vs simulated wall time, per phase, on the same site folders and settings.

The four PBC site folders of ``fedlego export-sites --dataset pbc --paired-sites 2`` run
- simulated: ``fedlego simulate --site-folders ...`` (Flower's simulation engine, one Ray worker
  per site, kept between messages);
- deployed: a secure SuperLink on loopback (TLS, node authentication, signed packages) and one
  ``fedlego site --threads 1`` per folder, each message in a child forked from the site's warm
  worker (the default);
- deployed with ``fedlego site --no-warm-worker``: each message in a fresh ClientApp process
  (Flower's default), which imports PyTorch and fedlego anew.
Each variant runs ``--repeats`` times, interleaved. The figures: each phase's seconds from
results.json (the coordinator's clock), and the whole command's wall time.

    python bench/deploy_overhead.py --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedlego.launcher import quiet_environment
from fedlego_bench.faults import FEDLEGO, SITES, deployment

SETTINGS = [f"min-sites={len(SITES)}", "wait-timeout=180", "phase-timeout=300"]
"""The defaults otherwise: the run a consortium would start."""
VARIANTS = ("simulated", "deployed, warm worker", "deployed, fresh process per message")


def _record(out: Path, seconds: float) -> dict:
    """The command's wall time, each phase's seconds and the rounds of the round phases."""
    results = json.loads((out / "results.json").read_text())
    if results.get("status") != "completed":
        raise RuntimeError(f"{out}: run ended {results.get('status')!r}: {results.get('failures')}")
    rounds = {
        name.replace("block:", "block-fedavg:"): len(series["validation_loss"])
        for name, series in results["rounds"].items()
    }
    phases = {name: round(phase["seconds"], 2) for name, phase in results["phases"].items()}
    return {"wall_seconds": round(seconds, 1), "phases": phases, "rounds": rounds}


def simulated(root: Path, sites: Path, index: int) -> dict:
    out = root / f"simulated-{index}"
    command = [*FEDLEGO, "simulate", "--site-folders", *[str(sites / s) for s in SITES], "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--set", *SETTINGS], env=quiet_environment(root / "sim-home"), capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return _record(out, seconds)


def deployed(root: Path, index: int, warm: bool) -> tuple[dict, Path]:
    folder = root / f"deployed-{'warm' if warm else 'fresh'}-{index}"
    options = () if warm else ("--no-warm-worker",)
    with deployment(folder, SETTINGS, options) as parties:
        parties.wait_for_sites()
        out = folder / "run"
        started = time.perf_counter()
        code = parties.start_run(out).wait(timeout=900)
        seconds = time.perf_counter() - started
        if code != 0:
            raise RuntimeError(f"fedlego run exited {code}: {(parties.logs / 'run-0.log').read_text()[-2000:]}")
        record = _record(out, seconds)
    return record, parties.sites


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Median over repeats of each phase and of the wall time, and each deployed variant's ratio to
    the simulated one."""
    medians = {}
    for variant, records in runs.items():
        phases = sorted({p for r in records for p in r["phases"]})
        medians[variant] = {
            "wall_seconds": statistics.median(r["wall_seconds"] for r in records),
            "phases": {p: statistics.median(r["phases"].get(p, 0.0) for r in records) for p in phases},
            "rounds": {p: statistics.median(r["rounds"][p] for r in records) for p in records[0]["rounds"]},
        }
    base = medians["simulated"]
    for variant in VARIANTS[1:]:
        medians[variant]["ratio_to_simulated"] = round(medians[variant]["wall_seconds"] / base["wall_seconds"], 2)
    return medians


def write_page(record: dict, out: Path) -> None:
    medians = record["medians"]
    phases = list(medians["simulated"]["phases"])
    header = "| phase | " + " | ".join(VARIANTS) + " |"
    lines = [
        "# Deployed vs simulated wall time",
        "",
        f"Made by `python bench/deploy_overhead.py --out docs/benchmarks --repeats {record['repeats']}` on "
        f"{record['date']} ({record['machine']}). The four PBC site folders of `fedlego export-sites --dataset pbc "
        f"--paired-sites 2`, default run settings plus `{' '.join(SETTINGS)}`; deployed: a secure SuperLink on "
        "loopback and one `fedlego site --threads 1` per folder, all on this machine. Medians over "
        f"{record['repeats']} interleaved repeats; seconds per phase from results.json (the coordinator's clock).",
        "",
        header,
        "|---|" + "---:|" * len(VARIANTS),
    ]

    def cell(variant: str, phase: str) -> str:
        seconds, rounds = medians[variant]["phases"].get(phase, 0.0), medians[variant]["rounds"].get(phase)
        return f"{seconds:.1f}" + (f" ({rounds:g} rounds)" if rounds else "")

    for phase in phases:
        lines.append(f"| {phase} | " + " | ".join(cell(v, phase) for v in VARIANTS) + " |")
    walls = " | ".join(f"**{medians[v]['wall_seconds']:.1f}**" for v in VARIANTS)
    ratios = " | ".join(f"{medians[v]['ratio_to_simulated']:.2f}" for v in VARIANTS[1:])
    lines += [f"| **whole command** | {walls} |", f"| ratio to simulated | 1.00 | {ratios} |"]
    runs = record["runs"]
    for variant in VARIANTS[1:]:
        each = [d["wall_seconds"] / s["wall_seconds"] for d, s in zip(runs[variant], runs["simulated"], strict=True)]
        lines += ["", f"Ratio of each repeat, {variant} / simulated: " + ", ".join(f"{r:.2f}" for r in each) + "."]
    lines += [
        "",
        "What the deployed figures include that the simulated ones do not: TLS and node authentication on every "
        "message, package signatures, and Flower's polling (a SuperNode with no message waits 3 s before asking "
        "again, not configurable in flwr 1.42; then it waits for the ClientApp's reply in 0.5 s steps; the "
        "coordinator asks for replies every 0.25 s). Every round is one such exchange. The whole command also "
        "counts start-up: `fedlego simulate` starts a SuperLink and Ray; `fedlego run` submits to a SuperLink and "
        "sites already running, and the SuperLink starts the ServerApp.",
        "",
        "Every repeat's figures are in `deploy-overhead.json`.",
        "",
    ]
    (out / "deploy-overhead.md").write_text("\n".join(lines))
    (out / "deploy-overhead.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="fedlego-overhead-") as temporary:
        root = Path(temporary)
        for index in range(args.repeats):
            record, sites = deployed(root, index, warm=True)
            runs[VARIANTS[1]].append(record)
            runs[VARIANTS[0]].append(simulated(root, sites, index))
            runs[VARIANTS[2]].append(deployed(root, index, warm=False)[0])
            print(json.dumps({v: r[-1]["wall_seconds"] for v, r in runs.items()}), flush=True)
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {sys.platform}",
        "repeats": args.repeats,
        "settings": SETTINGS,
        "runs": runs,
        "medians": summarise(runs),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_page(record, args.out)
    print((args.out / "deploy-overhead.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
