"""The ``fedlego`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fedlego.common.config import FuseConfig, ModelConfig, PrivacyConfig, TrainConfig
from fedlego.options import add_scenario_arguments, scenario_overrides, set_overrides
from fedlego.server.report import REPORT_NAME

# No telemetry or update checks in any process fedlego starts (Flower reads these at import).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

PRESETS: dict[str, dict] = {
    "tcga-acc": {"modalities": ["clinical", "rna", "mirna", "cnv"], "preprocessing": {}},
    "pbc": {"modalities": ["baseline", "labs"], "preprocessing": {"labs": {"log_transform": True}}},
    "synthetic": {"modalities": None, "preprocessing": {}},
}


def _add_centralized(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "centralized",
        help="train blocks, merge and fuse on one machine over patient-level folds",
        description="Centralized MM-Lego: one block per modality, then ensemble, LegoMerge and "
        "LegoFuse, evaluated on the same patient-level folds. Writes OUT/results.json.",
    )
    p.add_argument("--dataset", choices=sorted(PRESETS), default="tcga-acc")
    p.add_argument("--modalities", nargs="+", help="modalities to use (default: the dataset's preset)")
    p.add_argument("--task", choices=["survival", "binary"], default="survival", help="PBC only: outcome")
    p.add_argument("--folds", type=int, default=5, help="random sub-sampling folds (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=50, help="maximum block training epochs")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience (validation loss)")
    p.add_argument("--latent-merge", default="harmonic", help="harmonic, mean or sum")
    p.add_argument("--head-merge", default="slerp", help="slerp or linear")
    p.add_argument("--weighting", default="uniform", help="uniform, samples or validation")
    p.add_argument("--fuse-mode", default="stack", choices=["stack", "weave"])
    p.add_argument("--fuse-epochs", type=int, default=2)
    p.add_argument("--spatial", action="store_true", help="ablation: spatial instead of frequency domain")
    p.add_argument("--synthetic-patients", type=int, default=300)
    p.add_argument("--synthetic-modalities", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    p.add_argument("--progress", action="store_true", help="show per-epoch progress bars")
    p.add_argument(
        "--dp-epsilon", type=float, default=None, help="DP-SGD block training to this epsilon per block (default: off)"
    )
    p.add_argument("--dp-clip", type=float, default=1.0, help="DP-SGD per-patient gradient clipping norm")
    p.add_argument("--dp-delta", type=float, default=None, help="DP delta (default: min(1e-5, 1/n to a power of ten))")
    p.add_argument("--out", type=Path, required=True, help="output folder for results.json")
    p.set_defaults(handler=_centralized)


def _load(args: argparse.Namespace):
    from fedlego.common.data.bundled import load_dataset
    from fedlego.common.data.synthetic import default_synthetic_modalities

    if args.dataset == "pbc":
        return load_dataset("pbc", task=args.task)
    if args.dataset == "synthetic":
        return load_dataset(
            "synthetic",
            n_patients=args.synthetic_patients,
            modalities=default_synthetic_modalities(args.synthetic_modalities),
            seed=args.seed,
        )
    return load_dataset(args.dataset)


def _centralized(args: argparse.Namespace) -> int:
    from fedlego.common.centralized import CentralizedConfig, format_table, run_centralized

    dataset = _load(args)
    preset = PRESETS[args.dataset]
    modalities = args.modalities or preset["modalities"] or sorted(dataset.modalities)
    config = CentralizedConfig(
        dataset=args.dataset,
        modalities=modalities,
        n_folds=args.folds,
        seed=args.seed,
        latent_merge=args.latent_merge,
        head_merge=args.head_merge,
        weighting=args.weighting,
        model=ModelConfig(frequency=not args.spatial, seed=args.seed),
        training=TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed, device=args.device),
        fuse=FuseConfig(mode=args.fuse_mode, epochs=args.fuse_epochs, seed=args.seed),
        preprocessing=preset["preprocessing"],
        privacy=(
            PrivacyConfig(target_epsilon=args.dp_epsilon, max_grad_norm=args.dp_clip, delta=args.dp_delta)
            if args.dp_epsilon
            else None
        ),
    )
    print(f"fedlego centralized: {dataset.name}, modalities {modalities}, {args.folds} folds", file=sys.stderr)
    document = run_centralized(dataset, config, args.out, progress=args.progress)
    title = (
        f"{dataset.name} ({document['dataset']['task']}), {args.folds} patient-level folds, "
        f"test on patients with all of {modalities}"
    )
    print(format_table(document["summary"], document["metric"], title))
    print(f"wall time {document['wall_seconds']:.1f} s; results in {args.out / 'results.json'}")
    return 0


def _add_simulate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="run the federation on Flower's simulation engine with sites built from a scenario",
        description="Simulated federation: describe, block (+ FedAvg per shared modality), merge, evaluate, "
        "federated LegoFuse rounds, evaluate. One simulated site per scenario site. Writes OUT/results.json "
        "and OUT/packages/.",
    )
    add_scenario_arguments(p)
    p.add_argument("--block-rounds", type=int, default=2, help="FedAvg rounds per modality held by several sites")
    p.add_argument("--fuse-rounds", type=int, default=2)
    p.add_argument("--fuse-aggregation", choices=["fedavg", "fedprox"], default="fedavg")
    p.add_argument("--gpu-fraction", type=float, default=0.0, help="GPU share per simulated site (CUDA machines)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run-config key (see fedlego/flwr_app/pyproject.toml), repeatable",
    )
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in OUT instead of a new run")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from fedlego.common.federation import FederationSettings, scenario_dataset, simulated_scenario
    from fedlego.server.checks import format_federation_table
    from fedlego.simulation import run_simulation

    overrides = {
        **scenario_overrides(args),
        "block-rounds": args.block_rounds,
        "fuse-rounds": args.fuse_rounds,
        "fuse-aggregation": args.fuse_aggregation,
        **set_overrides(args.set),
    }
    settings = FederationSettings.from_run_config(overrides)
    if settings.extra:
        raise ValueError(f"unknown run-config keys {sorted(settings.extra)}")
    scenario = simulated_scenario(settings, scenario_dataset(settings))
    print(
        f"fedlego simulate: {args.scenario}, {len(scenario.sites)} sites "
        f"({', '.join(s.name + ':' + '+'.join(s.modalities) for s in scenario.sites)})",
        flush=True,
    )
    results = run_simulation(
        overrides, len(scenario.sites), args.out, gpu_fraction=args.gpu_fraction, resume=args.resume
    )
    print(format_federation_table(results))
    phases = ", ".join(f"{name} {v['seconds']:.1f} s" for name, v in results["phases"].items())
    print(f"status {results['status']}; wall time {results['wall_seconds']:.1f} s ({phases})")
    print(f"results in {args.out / 'results.json'}, packages in {args.out / 'packages'}")
    if (args.out / REPORT_NAME).exists():
        print(f"report in {args.out / REPORT_NAME}")
    return 0 if results["status"] == "completed" else 1


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict with a trained model package on a site folder (no labels needed)",
        description="Load a merged or fused model package (or a block package), verify it, transform the site "
        "folder's data with the preprocessing stored in the package and write one row per patient: patient_id, "
        "the modalities used, and risk plus survival_at_<cut> (survival) or p_<class> (classification).",
    )
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="PACKAGE",
        help="model package, e.g. OUT/packages/merged.pb or fused.pb",
    )
    p.add_argument(
        "--data", type=Path, required=True, metavar="SITE_FOLDER", help="site folder (site.json + modality files)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("predictions.csv"),
        metavar="CSV",
        help="CSV to write (default predictions.csv)",
    )
    verification = p.add_mutually_exclusive_group(required=True)
    verification.add_argument(
        "--coordinator-key",
        type=Path,
        metavar="PUB",
        help="public key that signed the package: the coordinator's signing.pub (a site's for its own block)",
    )
    verification.add_argument("--unverified", action="store_true", help="skip the signature check (not recommended)")
    p.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    import warnings

    from fedlego.common.prediction import PredictionWarning, predict_folder

    with warnings.catch_warnings():
        warnings.simplefilter("always", PredictionWarning)
        warnings.showwarning = lambda message, *_: print(f"fedlego: warning: {message}", file=sys.stderr)
        frame = predict_folder(args.model, args.data, coordinator_key=args.coordinator_key, unverified=args.unverified)
    try:
        frame.to_csv(args.out, index=False)
    except OSError as error:
        raise ValueError(f"{args.out}: cannot write the predictions ({error.strerror or error})") from error
    print(f"{len(frame)} patients predicted with {args.model}; written to {args.out}")
    return 0


def _add_deploy(subparsers: argparse._SubParsersAction) -> None:
    from fedlego.deploy import add_subcommands

    add_subcommands(subparsers)


def _add_audit(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("audit", help="check a coordinator's audit log")
    actions = p.add_subparsers(dest="action", required=True)
    verify = actions.add_parser("verify", help="detect modified, deleted or reordered entries")
    verify.add_argument("log", type=Path, help="the run's audit.jsonl")
    verify.add_argument("--results", type=Path, help="the run's results.json (its audit_head catches cut-off entries)")
    verify.set_defaults(handler=_audit_verify)


def _audit_verify(args: argparse.Namespace) -> int:
    from fedlego.server.audit import verify_log

    head = None
    if args.results is not None:
        head = json.loads(args.results.read_text()).get("audit_head")
    report = verify_log(args.log, head)
    if report.ok:
        print(f"{args.log}: {report.entries} entries, chain intact, head {report.head}")
        return 0
    print(f"{args.log}: TAMPERED: {report.problem}", file=sys.stderr)
    return 1


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="render a run's report.html from its results.json (offline)",
        description="Render the self-contained HTML run report (metrics, rounds, bytes, timings, refused "
        "packages, DP budget) from a federation's results.json.",
    )
    p.add_argument("results", type=Path, metavar="RESULTS_JSON", help="the run's results.json")
    p.add_argument("--out", type=Path, help="folder for report.html (default: the folder of RESULTS_JSON)")
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from fedlego.server.report import write_report

    path = write_report(json.loads(args.results.read_text()), args.out or args.results.parent)
    print(f"report in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedlego`` command."""
    parser = argparse.ArgumentParser(prog="fedlego", description="Federated multimodal model merging (MM-Lego).")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_centralized(subparsers)
    _add_simulate(subparsers)
    _add_predict(subparsers)
    _add_audit(subparsers)
    _add_report(subparsers)
    _add_deploy(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedlego`` console command."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as error:
        print(f"fedlego: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
