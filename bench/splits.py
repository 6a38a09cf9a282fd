"""Realistic hospital splits: panel cohorts cut into sites by a real covariate (Flower Datasets'
``NaturalIdPartitioner``: treatment unit, study group, admission period) or by a Dirichlet skew of
the outcome (``DirichletPartitioner``), each site holding every modality of its patients. Each split
runs as a federation (``fedlego`` in process, the same code as ``fedlego simulate --site-folders``) with
each round strategy over several seeds, against centralized training of the same model on the
pooled training patients. Every model is scored on the same test patients (the union of the sites'
test patients; roles are hashed per patient, so the pooled cohort has the same ones) with
scikit-survival's c-index; the strategy to make the default is chosen on the c-index over the
union of the sites' validation patients (the benchmark holds them all), never on test patients.

    python bench/splits.py --out docs/benchmarks --seeds 3 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from fedlego_bench.splits_page import fixed_splits, write_splits_page

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Flower Datasets imports Hugging Face's hub: no outbound call
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

NATURAL = {
    "Pbc3": "fac_unit",
    "dataOvarian1": "fac_group",
    "whas500": "fac_year",
    "actg": "fac_raceth",
    "GBSG2": "fac_tgrade",
}
"""Cohort -> the covariate its sites are cut by (treatment unit, study group, admission period,
the population a hospital serves (race/ethnicity), the tumour grade a referral centre sees)."""
DIRICHLET_SITES = 5
DIRICHLET_ALPHA = 0.5
MIN_SITE = 30
"""Natural sites smaller than this join the next smallest (a hospital of a handful is no site)."""
BUDGET = {"block-rounds": 10, "fuse-rounds": 10, "round-patience": 2}
LAST = {"unvalidated-rounds": "last"}
PATIENTS = {"site-weights": "patients", "start-site": "patients", "shared-preprocessing": "start-site"}
OWN = {"shared-preprocessing": "start-site"}
STRATEGIES: dict[str, dict[str, Any]] = {
    "fedavg (2+2 rounds)": {**PATIENTS, "unvalidated-rounds": "start"},
    "fedavg (2+2 rounds), keep last": {**PATIENTS, **LAST},
    "fedavg": {**PATIENTS, **BUDGET, "unvalidated-rounds": "start"},
    "fedavg, keep last": {**PATIENTS, **BUDGET, **LAST},
    "fedprox, keep last": {**PATIENTS, **BUDGET, **LAST, "fuse-aggregation": "fedprox"},
    "fedadam, keep last": {**PATIENTS, **BUDGET, **LAST, "server-optimizer": "fedadam"},
    "fedyogi, keep last": {**PATIENTS, **BUDGET, **LAST, "server-optimizer": "fedyogi"},
    "together, keep last": {**PATIENTS, **BUDGET, **LAST, "block-epochs": 5},
    "events (2+2 rounds), keep last": {**OWN, **LAST, "site-weights": "events", "start-site": "events"},
    "patients from events (2+2 rounds), keep last": {
        **OWN,
        **LAST,
        "site-weights": "patients",
        "start-site": "events",
    },
    "pooled preprocessing, patients from events (2+2 rounds), keep last": {
        **LAST,
        "site-weights": "patients",
        "start-site": "events",
        "shared-preprocessing": "pooled",
    },
}
"""Strategy -> run-config changes (each names every setting a default has since changed, so that
a strategy means the same run whatever today's defaults); the first is the defaults before this
benchmark. ``keep last``:
when no site can report a validation loss, keep the last round instead of the start. ``together``:
every site trains its block for one round's local epochs (5) from the shared initialisation before
the rounds, instead of up to block-epochs alone (every site holds every modality here, so this is
federated block training from the start). ``events``: sites weighed by their training events, and
each modality's rounds start from the block of the site with the most (``site-weights``,
``start-site``). ``patients from events``: sites weighed by their training patients, the rounds
started from the block of the site with the most training events. ``pooled preprocessing``: every
site trains its block, and the rounds run, with the preprocessing pooled from all sites' released
statistics (``shared-preprocessing = pooled``) instead of each site's own and then the start site's."""


def natural_sites(table, column: str) -> dict[str, list[str]]:
    """Patients grouped by ``column`` with Flower Datasets' NaturalIdPartitioner; groups under
    ``MIN_SITE`` patients merged into the smallest other group."""
    from datasets import Dataset
    from flwr_datasets.partitioner import NaturalIdPartitioner

    frame = table[["pid", column]].astype(str)
    partitioner = NaturalIdPartitioner(partition_by=column)
    partitioner.dataset = Dataset.from_pandas(frame, preserve_index=False)
    groups = {}
    for index in range(partitioner.num_partitions):
        part = partitioner.load_partition(index)
        groups[str(part[column][0])] = list(part["pid"])
    while len(groups) > 2 and min(len(v) for v in groups.values()) < MIN_SITE:
        ordered = sorted(groups, key=lambda k: len(groups[k]))
        small, into = ordered[0], ordered[1]
        groups[f"{into}+{small}"] = groups.pop(into) + groups.pop(small)
    return {f"site-{name}".replace(" ", "_"): ids for name, ids in groups.items()}


DIRICHLET_DRAWS = 5
"""Draws tried per seed (seeds seed, seed + 1000, ...): a draw whose smallest site stays under
``MIN_SITE`` after the partitioner's own 10 attempts is replaced by the next."""


def dirichlet_sites(table, seed: int) -> dict[str, list[str]]:
    """Patients in ``DIRICHLET_SITES`` sites whose event rates and sizes follow a Dirichlet
    (``DIRICHLET_ALPHA``) with Flower Datasets' DirichletPartitioner."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    frame = table[["pid", "event"]].astype({"pid": str, "event": int})
    for draw in range(DIRICHLET_DRAWS):
        partitioner = DirichletPartitioner(
            num_partitions=DIRICHLET_SITES,
            partition_by="event",
            alpha=DIRICHLET_ALPHA,
            min_partition_size=MIN_SITE,
            self_balancing=True,
            seed=seed + 1000 * draw,
        )
        partitioner.dataset = Dataset.from_pandas(frame, preserve_index=False)
        try:
            return {f"site-{i}": list(partitioner.load_partition(i)["pid"]) for i in range(DIRICHLET_SITES)}
        except ValueError:  # "the max number of attempts (10) was reached": the next draw
            continue
    raise ValueError(
        f"no Dirichlet draw of {DIRICHLET_SITES} sites of at least {MIN_SITE} patients in {DIRICHLET_DRAWS}"
    )


def c_index(ids: list[str], risk: dict[str, float], labels) -> float:
    """Harrell's c-index of ``risk`` on ``ids`` (scikit-survival); NaN without a comparable pair."""
    from sksurv.metrics import concordance_index_censored

    table = labels.table.loc[ids]
    scores = np.array([risk[i] for i in ids])
    try:
        return float(concordance_index_censored(table["event"].astype(bool), table["time"], scores)[0])
    except ValueError:  # every patient censored, or fewer than two
        return float("nan")


def federated(cohort: str, sites: dict[str, list[str]], strategy: str, seed: int, work: Path) -> dict[str, Any]:
    """One federation of the sites with one strategy: its test c-index overall and per site, and
    the pooled validation loss of the model it kept."""
    from fedlego.common.config import RunConfig
    from fedlego.common.data.scenarios import SiteSpec
    from fedlego.common.data.sitefolder import read_site_folder, write_site_folder
    from fedlego.common.prediction import predict_folder
    from fedlego.inprocess import InProcessTransport
    from fedlego.server.orchestrator import Federation
    from fedlego_bench.panel import panel_folder

    pooled = read_site_folder(panel_folder(cohort))
    dataset = pooled.dataset
    folders, held = [], set(dataset.patient_ids())
    for name, ids in sites.items():
        spec = SiteSpec(name, sorted(dataset.modalities), [i for i in ids if i in held])
        folders.append(write_site_folder(dataset, spec, None, work / name))
    out = work / "run"
    config = {"site-folders": ",".join(map(str, folders)), "seed": seed, "out-dir": str(out), **STRATEGIES[strategy]}
    start = time.perf_counter()
    results = Federation(
        InProcessTransport(config, len(folders)), RunConfig.from_flat(config), log=lambda _: None
    ).run()
    if results.status != "completed":
        return {"error": results.error}
    model = out / "packages" / ("fused.pb" if (out / "packages" / "fused.pb").exists() else "merged.pb")
    frame = predict_folder(model, panel_folder(cohort), unverified=True)
    risk = dict(zip(frame["patient_id"].astype(str), frame["risk"], strict=True))
    test = [i for i in pooled.roles["test"] if i in risk]
    validation = [i for i in pooled.roles["validation"] if i in risk]
    kept = results.rounds.get("fuse")
    return {
        "test": c_index(test, risk, dataset.labels),
        "validation": c_index(validation, risk, dataset.labels),
        "sites": {
            name: c_index([i for i in test if i in members], risk, dataset.labels)
            for name, members in ((n, set(ids)) for n, ids in sites.items())
        },
        "validation_loss": kept.validation_loss[kept.kept_round] if kept else None,
        "rounds": {k: len(v.validation_loss) - 1 for k, v in results.rounds.items()},
        "seconds": time.perf_counter() - start,
    }


def centralized(cohort: str, seed: int) -> tuple[dict[str, Any], dict[str, float]]:
    """The same model trained on the pooled training patients (validation patients for early
    stopping), scored on the same test patients; and its risk score of each test patient."""
    from dataclasses import replace

    from fedlego.common.centralized import train_fold
    from fedlego.common.data.scenarios import FoldSplit
    from fedlego.common.data.sitefolder import read_site_folder
    from fedlego.common.workflow import scores_of
    from fedlego_bench.panel import panel_dataset, panel_folder

    dataset, config = panel_dataset(cohort)
    roles = read_site_folder(panel_folder(cohort)).roles
    config = replace(config, seed=seed)  # seeds initialisation, training and fuse, as a federation's seed
    fold = train_fold(dataset, config, FoldSplit(0, roles["train"], roles["validation"], roles["test"]), lambda _: None)
    model = fold.fused or fold.merged
    scores = scores_of(model, fold.test, fold.task)
    validation = scores_of(model, fold.paired_validation, fold.task)
    risk = dict(zip(fold.test.ids, scores, strict=True))
    outcome = {
        "test": c_index(list(fold.test.ids), risk, dataset.labels),
        "validation": c_index(
            list(fold.paired_validation.ids),
            dict(zip(fold.paired_validation.ids, validation, strict=True)),
            dataset.labels,
        ),
    }
    return outcome, {str(k): float(v) for k, v in risk.items()}


def partitions(
    cohort: str, split_seeds: tuple[int, ...], kinds: tuple[str, ...] = ("natural", "dirichlet")
) -> dict[str, dict[str, list[str]]]:
    """The cohort's natural split (when it has one) and one Dirichlet split per split seed: the
    same splits for every training seed, so that the spread over seeds is the training's alone.
    ``kinds``: which of the two to make."""
    from fedlego_bench.panel import load_cohort

    table = load_cohort(cohort)
    table["pid"] = table["pid"].astype(str).map(lambda p: f"{cohort}-{p}")  # the ids export_cohort writes
    names = {s: "dirichlet" if s == 0 else f"dirichlet-{s}" for s in split_seeds}  # one name per draw
    splits = {names[s]: dirichlet_sites(table, s) for s in split_seeds} if "dirichlet" in kinds else {}
    if cohort in NATURAL and "natural" in kinds:
        splits["natural"] = natural_sites(table, NATURAL[cohort])
    return splits


def task(job: tuple[str, int, tuple[str, ...], tuple[int, ...], tuple[str, ...]]) -> dict[str, Any]:
    """Every split and the given strategies of one cohort and seed, and the centralized reference
    (its c-index on every site's test patients too, for the same spread over seeds)."""
    import torch

    torch.set_num_threads(1)  # one thread per job: --jobs 2 on 2 cores without oversubscription
    cohort, seed, strategies, split_seeds, kinds = job
    reference, risk = centralized(cohort, seed)
    record: dict[str, Any] = {"cohort": cohort, "seed": seed, "centralized": reference, "splits": {}}
    from fedlego.common.data.sitefolder import read_site_folder
    from fedlego_bench.panel import panel_folder

    labels = read_site_folder(panel_folder(cohort)).dataset.labels
    for split, sites in partitions(cohort, split_seeds, kinds).items():
        record["splits"][split] = {
            "sizes": {k: len(v) for k, v in sites.items()},
            "centralized_sites": {
                name: c_index([i for i in ids if i in risk], risk, labels) for name, ids in sites.items()
            },
            "strategies": {},
        }
        for strategy in strategies:
            with tempfile.TemporaryDirectory(prefix="fedlego-splits-") as folder:
                outcome = federated(cohort, sites, strategy, seed, Path(folder))
            record["splits"][split]["strategies"][strategy] = outcome
            print(f"{cohort} seed {seed} {split} {strategy}: {outcome.get('test', outcome.get('error'))}", flush=True)
    return record


def changes(
    records: list[dict[str, Any]], earlier: list[dict[str, Any]], strategies: list[str]
) -> dict[str, dict[str, list[float]]]:
    """Per strategy, its test and validation c-index in ``records`` minus the same strategy's in
    ``earlier``, one value per cohort, split and seed both hold."""
    before = {(r["cohort"], r["seed"]): r for r in earlier}
    out: dict[str, dict[str, list[float]]] = {s: {"test": [], "validation": []} for s in strategies}
    for record in records:
        old = before.get((record["cohort"], record["seed"]))
        for split, entry in record["splits"].items() if old else ():
            for strategy in strategies:
                now, then = entry["strategies"].get(strategy), old["splits"].get(split, {}).get("strategies", {})
                if now is None or strategy not in then:
                    continue
                for key in ("test", "validation"):
                    change = float(now[key]) - float(then[strategy][key])
                    if math.isfinite(change):
                        out[strategy][key].append(change)
    return out


def merged_records(lines: list[str]) -> list[dict[str, Any]]:
    """Records of one cohort and seed (from runs of other strategies, ``--append``) as one: each
    split's strategies together, so that they are paired with each other. The centralized model of
    a cohort and seed is the same in every run (seeded), kept from the first. Records of the
    earlier protocol (a Dirichlet draw per seed, an unseeded centralized model: no
    ``centralized_sites``) are never merged with those of this one (ValueError)."""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for line in lines:
        if not line.strip():
            continue
        record = json.loads(line)
        first = merged.setdefault((record["cohort"], record["seed"]), record)
        if first is record:
            continue
        if fixed_splits(first) != fixed_splits(record):
            raise ValueError(f"{record['cohort']} seed {record['seed']}: records of two benchmark protocols")
        for split, entry in record["splits"].items():
            first["splits"].setdefault(split, entry)["strategies"].update(entry["strategies"])
    return list(merged.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--cohorts", nargs="+", default=sorted(NATURAL))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument(
        "--split-seeds",
        type=int,
        nargs="+",
        default=[0],
        help="one Dirichlet split per split seed, the same for every training seed",
    )
    parser.add_argument("--kinds", nargs="+", choices=["natural", "dirichlet"], default=["natural", "dirichlet"])
    parser.add_argument(
        "--append", action="store_true", help="add to NAME-records.jsonl (another seed range) instead of starting it"
    )
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    parser.add_argument(
        "--render", action="store_true", help="write the page from the jobs finished so far (NAME-records.jsonl)"
    )
    parser.add_argument("--name", default="splits", help="the page's name: NAME.md, NAME.json, NAME-records.jsonl")
    parser.add_argument(
        "--records", help="with --render: read RECORDS-records.jsonl (another page's runs) instead of NAME's"
    )
    parser.add_argument(
        "--before",
        help="with --render: also pair each strategy with its own runs in BEFORE-records.jsonl (the same "
        "cohorts, splits and seeds run by earlier code)",
    )
    args = parser.parse_args(argv)
    command = shlex.join(["python", "bench/splits.py", *(sys.argv[1:] if argv is None else argv)])
    if args.render:
        source = args.out / f"{args.records or args.name}-records.jsonl"
        records = merged_records(source.read_text().splitlines())
        done = {s for r in records for e in r["splits"].values() for s in e["strategies"]}
        chosen = {name: STRATEGIES[name] for name in args.strategies if name in done}
        summary = {"records": records, "strategies": chosen, "wall_seconds": float("nan")}
        if args.before:
            earlier = merged_records((args.out / f"{args.before}-records.jsonl").read_text().splitlines())
            summary["before"] = {"name": args.before, "differences": changes(records, earlier, list(chosen))}
        (args.out / f"{args.name}.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
        write_splits_page(summary, args.out / f"{args.name}.md", command)
        return
    from fedlego_bench.panel import panel_folder

    for cohort in args.cohorts:
        panel_folder(cohort)  # exported once, before the workers read it
    strategies = tuple(args.strategies)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = [
        (c, s, strategies, tuple(args.split_seeds), tuple(args.kinds)) for s in seeds for c in args.cohorts
    ]  # every cohort's first seed first
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / f"{args.name}-records.jsonl"  # each finished job at once: a cut-short run keeps its part
    if not args.append:
        partial.write_text("")
    merged_records(partial.read_text().splitlines())  # an --append file of another protocol: refused before the runs
    with ProcessPoolExecutor(max(args.jobs, 1)) as pool:
        futures = {pool.submit(task, job): job for job in jobs}
        for future in as_completed(futures):  # written as each finishes; a failed job is named, not fatal
            try:
                record = future.result()
            except Exception as error:
                print(f"{futures[future][:2]} failed: {type(error).__name__}: {error}", flush=True)
                continue
            with partial.open("a") as handle:
                handle.write(json.dumps(record, default=float) + "\n")
    records = merged_records(partial.read_text().splitlines())
    chosen = {name: STRATEGIES[name] for name in strategies}
    summary = {"records": records, "strategies": chosen, "wall_seconds": time.perf_counter() - start}
    (args.out / f"{args.name}.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    write_splits_page(summary, args.out / f"{args.name}.md", command)


if __name__ == "__main__":
    main()
