"""Benchmark: the simulated federation against the centralized pipeline, and how it scales.

Runs, one at a time and each as a subprocess (so wall time includes start-up):

1. ``fedlego simulate --scenario tcga-acc --overlap 1`` (5 sites) and ``fedlego centralized
   --dataset tcga-acc --folds 1`` (same fold 0, same patient-level split, seed 0): wall times,
   their ratio and the federation's seconds per phase.
2. ``fedlego simulate --scenario synthetic`` with 2, 4, 8, 16 and 32 sites and small settings:
   wall time and peak memory of the whole process tree (RSS summed over the command, its
   descendants and every process carrying the run's private ``FLWR_HOME``, polled every 0.25 s).
3. Bytes on the wire per site of the tcga-acc run against FedAvg of an early-fusion model of the
   same encoders, computed from that model's size.
4. Federated against centralized metrics on the same fold.

Writes ``OUT/federation.json`` and ``OUT/federation.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

import torch
from torch import nn

from fedlego.common.data.bundled import load_dataset
from fedlego.common.data.scenarios import dataset_splits
from fedlego.common.data.tensors import fit_preprocessors, make_tensor_set, task_for
from fedlego.common.encoders import build_encoder, reference_encoder_spec
from fedlego.common.workflow import ModelConfig

TCGA_MODALITIES = ["clinical", "rna", "mirna", "cnv"]
SIMULATE_TCGA = ["simulate", "--scenario", "tcga-acc", "--overlap", "1"]
CENTRALIZED_TCGA = ["centralized", "--dataset", "tcga-acc", "--folds", "1"]
SMALL = [
    "--set",
    "block-epochs=5",
    "--set",
    "synthetic-patients=400",
    "--set",
    "synthetic-modalities=2",
    "--fuse-rounds",
    "1",
    "--block-rounds",
    "1",
]
# target sites -> (sites per modality, paired sites) with 2 synthetic modalities:
# sites = 2 * sites-per-modality + paired-sites.
SCALING = {2: (1, 0), 4: (1, 2), 8: (3, 2), 16: (7, 2), 32: (15, 2)}
PAGE = os.sysconf("SC_PAGE_SIZE")
POLL_SECONDS = 0.25


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


def process_tree(root: int, needle: bytes | None) -> set[int]:
    """``root``, its descendants (ppid chains) and, when ``needle`` is given, every process
    whose environment contains it (Flower and Ray may re-parent or detach their helpers)."""
    parents = _processes()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid in tree or pid not in parents:
            continue
        tree.add(pid)
        stack += children.get(pid, [])
    if needle is not None:
        mine = os.getpid()
        tree |= {pid for pid in parents if pid != mine and pid not in tree and _has_environment(pid, needle)}
        for pid in list(tree):  # descendants of the detached ones too
            stack = list(children.get(pid, []))
            while stack:
                child = stack.pop()
                if child not in tree:
                    tree.add(child)
                    stack += children.get(child, [])
    return tree


def run_measured(command: list[str], flwr_home: Path | None, timeout: float) -> dict:
    """Run ``command`` in its own session, echo its output, poll the memory of its process tree
    every 0.25 s; on timeout interrupt it (SIGINT, so the CLI stops its Flower processes), then
    kill what is left of the tree by pid."""
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
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        print("    " + line.rstrip(), flush=True)
    try:
        process.wait(timeout=90 if state["timed_out"] else None)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    wall = time.perf_counter() - start
    done.set()
    thread.join()
    if needle is not None:  # whatever of this run is still alive after an interrupted run
        for pid in process_tree(process.pid, needle) - {process.pid}:
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


def fedlego(arguments: list[str], out: Path, timeout: float) -> dict:
    """One ``fedlego`` command; the measurement, the pretty command and its results document."""
    command = [sys.executable, "-m", "fedlego.cli", *arguments, "--out", str(out)]
    flwr_home = out.resolve() / ".flower" / "home" if arguments[0] == "simulate" else None
    load = os.getloadavg()[0]
    print(f"  $ fedlego {' '.join(arguments)} --out DIR", flush=True)
    record = run_measured(command, flwr_home, timeout)
    record["command"] = " ".join(["fedlego", *arguments, "--out", "DIR"])
    record["load_average_1min_before"] = load
    path = out / "results.json"
    record["results"] = json.loads(path.read_text()) if path.exists() else None
    packages = out / "packages"
    if packages.is_dir():
        record["package_bytes"] = {p.name: p.stat().st_size for p in sorted(packages.glob("*.pb"))}
    print(f"  -> exit {record['returncode']}, {record['wall_seconds']:.1f} s", flush=True)
    return record


# -- early-fusion FedAvg reference -----------------------------------------------------------
class EarlyFusion(nn.Module):
    """The reference encoders of every modality, their embeddings concatenated into an MLP head."""

    def __init__(self, encoders: dict[str, nn.Module], widths: dict[str, int], hidden: int, n_outputs: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.head = nn.Sequential(nn.Linear(sum(widths.values()), hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        parts = []
        for name, encoder in self.encoders.items():
            z = encoder(**inputs[name])
            z = z[0] if isinstance(z, tuple) else z
            parts.append(z.mean(dim=1) if z.dim() == 3 else z)
        return self.head(torch.cat(parts, dim=1))


def early_fusion_model() -> dict:
    """Build the early-fusion model concretely from tcga-acc fold 0 and count its parameters."""
    config = ModelConfig()
    dataset = load_dataset("tcga-acc")
    dataset = dataset.subset(dataset.patient_ids(), TCGA_MODALITIES)
    split = dataset_splits(dataset, n_folds=1, seed=0)[0]
    preprocessors = fit_preprocessors(dataset, split.train, {})
    task = task_for(dataset.labels, split.train)
    train = make_tensor_set(dataset, preprocessors, split.train)
    torch.manual_seed(config.seed)
    encoders, widths, examples, specs = {}, {}, {}, {}
    for name in TCGA_MODALITIES:
        holding = torch.nonzero(train.present[name]).squeeze(1)[:2]
        examples[name] = {k: v[holding] for k, v in train.inputs[name].items()}
        specs[name] = reference_encoder_spec(
            dataset.modalities[name].kind, examples[name], width=config.encoder_width, dropout=config.dropout
        )
        encoders[name] = build_encoder(specs[name])
        encoders[name].eval()
        with torch.no_grad():
            z = encoders[name](**examples[name])
        z = z[0] if isinstance(z, tuple) else z
        widths[name] = int(z.shape[-1])
    model = EarlyFusion(encoders, widths, config.encoder_width, task.n_outputs).eval()
    with torch.no_grad():
        logits = model(examples)
    assert logits.shape == (2, task.n_outputs), logits.shape
    per_encoder = {name: sum(p.numel() for p in e.parameters()) for name, e in encoders.items()}
    n_parameters = sum(p.numel() for p in model.parameters())
    return {
        "description": "reference encoders (ModelConfig defaults: width "
        f"{config.encoder_width}, dropout {config.dropout}) of {TCGA_MODALITIES} on tcga-acc fold-0 tensors, "
        f"embeddings concatenated -> Linear({sum(widths.values())}, {config.encoder_width}) -> ReLU -> "
        f"Linear({config.encoder_width}, {task.n_outputs})",
        "encoders": {name: specs[name]["name"] + str(specs[name]["kwargs"]) for name in TCGA_MODALITIES},
        "parameters_per_encoder": per_encoder,
        "parameters": n_parameters,
        "float32_bytes": 4 * n_parameters,
    }


def wire_bytes(federated: dict, model: dict) -> dict:
    """LegoMerge's measured bytes per site (blocks, FedAvg of shared blocks, merge, fuse; evaluate
    apart; describe left out) against FedAvg of the early-fusion model (computed)."""
    config = federated["config"]
    rounds = config["block_rounds"] + config["fuse_rounds"] + 1
    sites = sorted(federated["sites"])
    lego = {s: 0 for s in sites}
    evaluate = {s: 0 for s in sites}
    describe = {s: 0 for s in sites}
    lego_phases = []
    for phase, record in federated["phases"].items():
        target = describe if phase == "describe" else evaluate if phase.startswith("evaluate-") else lego
        if target is lego:
            lego_phases.append(phase)
        for site, traffic in record["bytes"].items():
            target[site] = target.get(site, 0) + traffic["sent"] + traffic["received"]
    fedavg_per_site = 2 * model["float32_bytes"] * rounds
    per_site = {
        s: {
            "legomerge_bytes": lego.get(s, 0),
            "evaluate_bytes": evaluate.get(s, 0),
            "describe_bytes": describe.get(s, 0),
            "fedavg_early_fusion_bytes": fedavg_per_site,
            "ratio": fedavg_per_site / lego[s] if lego.get(s) else math.inf,
        }
        for s in sites
    }
    lego_total = sum(lego.values())
    fedavg_total = fedavg_per_site * len(sites)
    return {
        "legomerge_phases": lego_phases,
        "rounds": rounds,
        "rounds_formula": f"block-rounds {config['block_rounds']} + fuse-rounds {config['fuse_rounds']} + 1 upload",
        "fedavg_per_site_bytes": fedavg_per_site,
        "per_site": per_site,
        "legomerge_total_bytes": lego_total,
        "evaluate_total_bytes": sum(evaluate.values()),
        "fedavg_total_bytes": fedavg_total,
        "ratio_total": fedavg_total / lego_total if lego_total else math.inf,
        "ratio_worst_site": min(v["ratio"] for v in per_site.values()),
    }


# -- metrics ---------------------------------------------------------------------------------
def compare_metrics(federated: dict, centralized: dict) -> dict:
    """Per model: the federated sample-weighted mean over sites and the centralized fold-0 value."""
    fold = centralized["folds"][0]["models"]
    rows = {}
    for name in [*(f"block:{m}" for m in TCGA_MODALITIES), "merge", "fuse"]:
        phase = "fuse" if name == "fuse" else "merge"
        entry = federated.get("metrics", {}).get(phase, {}).get(name)
        rows[name] = {
            "federated_weighted_mean": entry["weighted_mean"] if entry else None,
            "federated_n": entry["n"] if entry else None,
            "federated_per_site": entry["per_site"] if entry else None,
            "centralized": fold.get(name, {}).get("metric"),
            "centralized_n": fold.get(name, {}).get("n"),
        }
    return rows


# -- the page --------------------------------------------------------------------------------
def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def _num(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def markdown(doc: dict) -> str:
    """The benchmark page."""
    head = doc["headline"]
    sim, cen = doc["tcga_acc"]["simulate"], doc["tcga_acc"]["centralized"]
    met = "met" if head["wall_ratio"] <= 1.5 else "MISSED"
    lines = [
        "# Federated MM-Lego benchmark",
        "",
        f"Machine: {doc['machine']}. Date: {doc['date']}. Produced by `make bench-federation` "
        f"(`{doc['command']}`). Every command runs as a subprocess, one at a time; wall time includes "
        "Python, Flower and Ray start-up. The machine was shared with other work while this ran "
        "(1-minute load average before each command is given).",
        "",
        "## Targets",
        "",
        f"- Simulated federation wall time <= 1.5 x centralized: **{met}** "
        f"({sim['wall_seconds']:.1f} s vs {cen['wall_seconds']:.1f} s, ratio {head['wall_ratio']:.2f}).",
    ]
    wire = doc["wire"]
    if wire is not None:
        ok = "met" if wire["ratio_total"] >= 10 else "MISSED"
        worst = "met" if wire["ratio_worst_site"] >= 10 else "MISSED"
        lines += [
            f"- >= 10x fewer bytes than FedAvg of an early-fusion model: **{ok}** over all sites "
            f"(ratio {wire['ratio_total']:.1f}); per site the worst ratio is {wire['ratio_worst_site']:.1f} "
            f"(**{worst}** for every site).",
        ]
    finished = [r for r in doc["scaling"] if r["status"] == "completed"]
    lines += [
        f"- Scaling: {len(finished)} of {len(doc['scaling'])} site counts completed "
        f"(largest completed: {max((r['sites'] for r in finished), default=0)} sites).",
        "",
        "## 1. Wall time: simulated federation vs centralized (tcga-acc, fold 0, seed 0)",
        "",
        "| command | wall time | peak RSS (tree) | load before |",
        "|---|---|---|---|",
    ]
    for record in (sim, cen):
        lines.append(
            f"| `{record['command']}` | {record['wall_seconds']:.1f} s | {_mib(record['peak_rss_bytes'])} | "
            f"{record['load_average_1min_before']:.2f} |"
        )
    lines += [
        "",
        f"Each command ran {len(sim['repetition_wall_seconds'])} time(s), alternating; the fastest run of each "
        "is used (wall times of all runs: simulate "
        + ", ".join(f"{w:.1f} s" for w in sim["repetition_wall_seconds"])
        + "; centralized "
        + ", ".join(f"{w:.1f} s" for w in cen["repetition_wall_seconds"])
        + "; load averages before: simulate "
        + ", ".join(f"{w:.2f}" for w in sim["repetition_load_average_1min_before"])
        + "; centralized "
        + ", ".join(f"{w:.2f}" for w in cen["repetition_load_average_1min_before"])
        + ").",
        "",
        f"Ratio simulate / centralized: **{head['wall_ratio']:.2f}** (target <= 1.5).",
    ]
    if sim["results"]:
        result = sim["results"]
        lines += [
            "",
            f"Simulated run ({len(result['sites'])} sites: "
            + ", ".join(f"{s}: {'+'.join(v['modalities'])}" for s, v in result["sites"].items())
            + f"), status {result['status']}; seconds per phase from its results.json "
            f"(the orchestrator's {result['wall_seconds']:.1f} s; the rest of the command's wall time is the "
            "SuperLink start, `flwr run` and shutdown). Ray and the simulated sites start during `describe`.",
            "",
            "| phase | seconds |",
            "|---|---|",
        ]
        lines += [f"| {name} | {v['seconds']:.1f} |" for name, v in result["phases"].items()]
        if cen["results"]:
            lines.append(
                f"\nCentralized: {cen['results']['wall_seconds']:.1f} s inside the pipeline "
                f"of {cen['wall_seconds']:.1f} s for the command."
            )
    lines += [
        "",
        "## 2. Scaling (synthetic, small settings)",
        "",
        f"Settings: `{' '.join(SMALL)}`, layout modality-sites; sites = 2 x sites-per-modality + paired-sites. "
        "Peak memory: maximum over 0.25 s polls of the summed RSS of the command, its descendants "
        "(ppid chains) and every process whose environment holds the run's `FLWR_HOME` (shared pages "
        "are counted once per process, so this overstates physical memory). Time limit "
        f"{doc['scaling_timeout_seconds']:.0f} s per run.",
        "",
        "| target sites | sites (CLI) | layout | status | wall time | peak RSS (tree) | processes at peak "
        "| load before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["scaling"]:
        lines.append(
            f"| {r['target_sites']} | {r['sites'] if r['sites'] is not None else 'n/a'} | "
            f"{r['sites_per_modality']}/modality + {r['paired_sites']} paired | {r['status']} | "
            f"{r['wall_seconds']:.1f} s | {_mib(r['peak_rss_bytes'])} | {r['peak_processes']} | "
            f"{r['load_average_1min_before']:.2f} |"
        )
    lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in doc["scaling"]) + "."]
    if wire is not None:
        model = doc["early_fusion_model"]
        lines += [
            "",
            "## 3. Bytes on the wire per site (tcga-acc simulated run)",
            "",
            "LegoMerge side: measured, from the run's results.json (sent + received per site) over the phases "
            f"{', '.join(wire['legomerge_phases'])}; `describe` is left out and the `evaluate-*` phases are shown "
            "apart. FedAvg side: **computed from the model size, not measured on a run**: FedAvg sends the full "
            f"model down and up every round, 2 x {model['float32_bytes']} bytes (float32, "
            f"{model['parameters']} parameters) x {wire['rounds']} rounds ({wire['rounds_formula']}) = "
            f"{_kib(wire['fedavg_per_site_bytes'])} per participating site (every site counted).",
            "",
            f"Early-fusion model: {model['description']}; parameters per encoder "
            + ", ".join(f"{k} {v}" for k, v in model["parameters_per_encoder"].items())
            + ".",
            "",
            "| site | LegoMerge phases | evaluate | FedAvg early fusion (computed) | ratio |",
            "|---|---|---|---|---|",
        ]
        for site, v in wire["per_site"].items():
            lines.append(
                f"| {site} | {_kib(v['legomerge_bytes'])} | {_kib(v['evaluate_bytes'])} | "
                f"{_kib(v['fedavg_early_fusion_bytes'])} | {v['ratio']:.1f} |"
            )
        lines += [
            f"| all | {_kib(wire['legomerge_total_bytes'])} | {_kib(wire['evaluate_total_bytes'])} | "
            f"{_kib(wire['fedavg_total_bytes'])} | {wire['ratio_total']:.1f} |",
            "",
            f"Ratio FedAvg / LegoMerge over all sites: **{wire['ratio_total']:.1f}** (target >= 10); "
            f"with evaluation traffic included: "
            f"{wire['fedavg_total_bytes'] / (wire['legomerge_total_bytes'] + wire['evaluate_total_bytes']):.1f}.",
        ]
        if sim.get("package_bytes"):
            lines.append(
                "Package files written by the run: "
                + ", ".join(f"{k} {_kib(v)}" for k, v in sim["package_bytes"].items())
                + "."
            )
    if doc["metrics"] is not None:
        metric = sim["results"].get("metric", "metric")
        lines += [
            "",
            f"## 4. Federated vs centralized {metric} (tcga-acc, fold 0)",
            "",
            "Federated: sample-weighted mean over sites of each site's test patients, with whatever "
            "modalities each site holds (blocks and merge from the evaluation after merging, fuse after the "
            "fuse rounds). Centralized: the complete-case test patients of fold 0 (every modality). "
            "The test populations differ by design, so the numbers are not expected to match.",
            "",
            "| model | federated (weighted) | federated n | centralized | centralized n |",
            "|---|---|---|---|---|",
        ]
        for name, row in doc["metrics"].items():
            lines.append(
                f"| {name} | {_num(row['federated_weighted_mean'])} | {row['federated_n']} | "
                f"{_num(row['centralized'])} | {row['centralized_n']} |"
            )
    lines += [
        "",
        "## Commands",
        "",
        *(f"- `{c}`" for c in doc["commands"]),
        "",
    ]
    return "\n".join(lines)


def fastest(records: list[dict]) -> dict:
    """The fastest successful repetition (the least disturbed by other load), with every
    repetition's wall time attached."""
    ok = [r for r in records if r["returncode"] == 0 and r["results"]] or records
    best = min(ok, key=lambda r: r["wall_seconds"])
    best["repetition_wall_seconds"] = [r["wall_seconds"] for r in records]
    best["repetition_load_average_1min_before"] = [r["load_average_1min_before"] for r in records]
    return best


def site_count(lines: list[str]) -> int | None:
    """The site count ``fedlego simulate`` prints on its first line."""
    for line in lines:
        if line.startswith("fedlego simulate:") and " sites (" in line:
            with suppress(ValueError):
                return int(line.split(" sites (")[0].rsplit(" ", 1)[1])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--sites", type=int, nargs="+", default=sorted(SCALING), choices=sorted(SCALING))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per scaling run")
    parser.add_argument("--repeat", type=int, default=2, help="repetitions of the tcga-acc pair (fastest kept)")
    args = parser.parse_args()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    machine = (
        f"{platform.machine()} {cpu}, {os.cpu_count()} cores, {memory / 2**30:.0f} GiB RAM, "
        f"Python {platform.python_version()}, torch {torch.__version__}, CPU only"
    )
    date = datetime.date.today().isoformat()
    with tempfile.TemporaryDirectory(prefix="fedlego-bench-") as folder:
        work = Path(folder)
        simulates, centrals = [], []
        for repetition in range(args.repeat):
            print(f"tcga-acc: simulated federation ({repetition + 1}/{args.repeat})", flush=True)
            simulates.append(fedlego(SIMULATE_TCGA, work / f"simulate-{repetition}", timeout=1800))
            print(f"tcga-acc: centralized ({repetition + 1}/{args.repeat})", flush=True)
            centrals.append(fedlego(CENTRALIZED_TCGA, work / f"centralized-{repetition}", timeout=1800))
        simulate = fastest(simulates)
        centralized = fastest(centrals)
        scaling = []
        for target in args.sites:
            per_modality, paired = SCALING[target]
            arguments = [
                "simulate",
                "--scenario",
                "synthetic",
                *SMALL,
                "--sites-per-modality",
                str(per_modality),
                "--paired-sites",
                str(paired),
            ]
            print(f"scaling: {target} sites", flush=True)
            record = fedlego(arguments, work / f"scaling-{target}", timeout=args.timeout)
            result = record["results"]
            status = "timed out" if record["timed_out"] else (result or {}).get("status", "no results")
            if record["returncode"] != 0 and status == "completed":
                status = f"exit {record['returncode']}"
            scaling.append(
                {
                    "target_sites": target,
                    "sites": site_count(record["output"]),
                    "sites_per_modality": per_modality,
                    "paired_sites": paired,
                    "command": record["command"],
                    "status": status,
                    "returncode": record["returncode"],
                    "wall_seconds": record["wall_seconds"],
                    "peak_rss_bytes": record["peak_rss_bytes"],
                    "peak_processes": record["peak_processes"],
                    "load_average_1min_before": record["load_average_1min_before"],
                    "phase_seconds": {k: v["seconds"] for k, v in (result or {}).get("phases", {}).items()},
                    "orchestrator_wall_seconds": (result or {}).get("wall_seconds"),
                    "first_line": next((line for line in record["output"] if line.startswith("fedlego ")), None),
                }
            )
    raw = Path(tempfile.gettempdir()) / "fedlego-bench-federation-raw.json"
    raw.write_text(json.dumps({"simulate": simulate, "centralized": centralized, "scaling": scaling}, default=str))
    print(f"raw measurements in {raw}", flush=True)
    model = early_fusion_model()
    federated, central = simulate["results"], centralized["results"]
    wire = wire_bytes(federated, model) if federated and federated.get("phases") else None
    metrics = compare_metrics(federated, central) if federated and central else None
    for record in (simulate, centralized):
        record["output_tail"] = record.pop("output")[-40:]
    document = {
        "machine": machine,
        "date": date,
        "command": "python bench/federation.py --out " + str(args.out),
        "repeat": args.repeat,
        "commands": [simulate["command"], centralized["command"], *(r["command"] for r in scaling)],
        "headline": {
            "simulate_wall_seconds": simulate["wall_seconds"],
            "centralized_wall_seconds": centralized["wall_seconds"],
            "wall_ratio": simulate["wall_seconds"] / centralized["wall_seconds"],
            "wall_ratio_target": 1.5,
            "bytes_ratio": wire["ratio_total"] if wire else None,
            "bytes_ratio_target": 10.0,
        },
        "tcga_acc": {
            "simulate": {
                **{k: v for k, v in simulate.items() if k != "results"},
                "results": federated,
                "site_count": site_count(simulate["output_tail"]),
            },
            "centralized": centralized,
        },
        "scaling_timeout_seconds": args.timeout,
        "scaling": scaling,
        "early_fusion_model": model,
        "wire": wire,
        "metrics": metrics,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "federation.json").write_text(json.dumps(document, indent=2, default=str))
    (args.out / "federation.md").write_text(markdown(document))
    print((args.out / "federation.md").read_text())


if __name__ == "__main__":
    main()
