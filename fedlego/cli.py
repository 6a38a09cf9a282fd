"""The ``fedlego`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

from fedlego.common.disclosure import DEFAULT_MIN_CELL
from fedlego.common.time_units import TIME_UNITS
from fedlego.options import (
    CENTRALIZED_DATA_KEYS,
    CENTRALIZED_SECTIONS,
    add_config_arguments,
    add_deprecated,
    add_scenario_arguments,
    add_set_argument,
    config_overrides,
)
from fedlego.server.report import REPORT_NAME

# No telemetry or update checks in any process fedlego starts (Flower reads these at import).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def _add_centralized(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "centralized",
        help="train blocks, merge and fuse on one machine over patient-level folds",
        description="Centralized MM-Lego: one block per modality, then ensemble, LegoMerge and "
        "LegoFuse, evaluated on the same patient-level folds. Writes OUT/results.json. Every option "
        "below is a run-config key shared with `fedlego simulate` (`fedlego config` lists them).",
    )
    p.add_argument("--folds", type=int, default=5, help="random sub-sampling folds (default 5)")
    add_config_arguments(p, CENTRALIZED_SECTIONS, CENTRALIZED_DATA_KEYS)
    p.add_argument("--spatial", dest="frequency", action="store_false", help="ablation: same as --no-frequency")
    add_set_argument(p)
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bars for folds and epochs (default: on when the output is a terminal)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder for results.json")
    p.set_defaults(handler=_centralized)


def _centralized(args: argparse.Namespace) -> int:
    from fedlego.client.simulated import cohort_source
    from fedlego.common.centralized import CentralizedConfig, format_table, fuse_note, run_centralized
    from fedlego.common.config import RunConfig
    from fedlego.common.data.presets import preprocessing_for, run_cohort

    # One block per modality on pooled patients: no block FedAvg rounds to run (or to exempt from DP).
    config = RunConfig.from_flat({"block-rounds": 0, **config_overrides(args)})
    dataset = run_cohort(config)
    modalities = list(dataset.modalities)
    central = CentralizedConfig.from_run(config, modalities, args.folds, preprocessing_for(config))
    if config.scenario.data:
        central.dataset = dataset.name
        central.source = cohort_source(config)
    print(f"fedlego centralized: {dataset.name}, modalities {modalities}, {args.folds} folds", file=sys.stderr)
    document = run_centralized(dataset, central, args.out, progress=args.progress)
    title = (
        f"{dataset.name} ({document['dataset']['task']}), {args.folds} patient-level folds, "
        f"test on patients with all of {modalities}"
    )
    print(format_table(document["summary"], document["metric"], title))
    print(fuse_note(document["folds"]))
    print(f"wall time {document['wall_seconds']:.1f} s; results in {args.out / 'results.json'}")
    return 0


def _add_simulate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="run the federation on Flower's simulation engine with sites built from a scenario",
        description="Simulated federation: describe, block (+ FedAvg per shared modality), merge, evaluate, "
        "federated LegoFuse rounds, evaluate. One simulated site per scenario site. Writes OUT/results.json "
        "and OUT/packages/. Any run-config key can be set with --set KEY=VALUE (`fedlego config` lists them).",
    )
    add_scenario_arguments(p)
    add_config_arguments(p, keys=("block-rounds", "fuse-rounds", "fuse-aggregation"), seed=False)
    p.add_argument("--gpu-fraction", type=float, default=0.0, help="GPU share per simulated site (CUDA machines)")
    add_set_argument(p)
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in OUT instead of a new run")
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="output folder: results.json, report.html, packages"
    )
    p.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from fedlego.client.simulated import simulated_scenario, site_folders
    from fedlego.common.config import RunConfig
    from fedlego.common.data.presets import run_cohort
    from fedlego.console import federation_table, phase_times
    from fedlego.simulation import run_simulation

    overrides = config_overrides(args)
    config = RunConfig.from_flat(overrides)
    if config.scenario.site_folders:
        sites = [(s.name, sorted(s.dataset.modalities)) for s in site_folders(config)]
        source = f"{len(sites)} site folders"
    else:
        sites = [(s.name, s.modalities) for s in simulated_scenario(config, run_cohort(config)).sites]
        source = f"site folder {config.scenario.data}" if config.scenario.data else config.scenario.dataset
    described = ", ".join(name + ":" + "+".join(modalities) for name, modalities in sites)
    print(f"fedlego simulate: {source}, {len(sites)} sites ({described})", flush=True)
    results = run_simulation(overrides, len(sites), args.out, gpu_fraction=args.gpu_fraction, resume=args.resume)
    print(federation_table(results))
    print(f"status {results.status}; wall time {results.wall_seconds or 0.0:.1f} s ({phase_times(results)})")
    print(f"results in {args.out / 'results.json'}, packages in {args.out / 'packages'}")
    if (args.out / REPORT_NAME).exists():
        print(f"report in {args.out / REPORT_NAME}")
    return 0 if results.status == "completed" else 1


def _add_check(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check",
        help="validate a site folder, list every problem and warning, and show what it would send",
        description="Reads a site folder as `fedlego site` and the simulated sites do (site.json, labels, "
        "modality files, split.csv) and prints the patients per modality and role and the SHA-256 of its files, "
        "then every problem at once (unreadable files, identifier-like columns, a mismatch with the consortium "
        "schema) and the warnings that do not stop it (few patients or events, rare categories, columns almost "
        "all missing). Exit code 2 when there is a problem.",
    )
    p.add_argument("folders", type=Path, nargs="+", metavar="FOLDER", help="site folder(s)")
    p.add_argument(
        "--min-cell",
        type=int,
        default=None,
        help=f"disclosure threshold (default: the folder's site.json min_cell, else {DEFAULT_MIN_CELL})",
    )
    p.add_argument("--schema", type=Path, metavar="FILE", help="consortium schema (`fedlego schema`) to check against")
    p.add_argument(
        "--show-outgoing",
        action="store_true",
        help="print what the site would send before training: counts, cut points and the preprocessing its "
        "packages carry (names, categories, statistics)",
    )
    p.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from fedlego.client.runtime import SiteRuntime
    from fedlego.common.data.sitecheck import check_site_folder

    schema = None
    if args.schema:
        from fedlego.common.data.schema import ConsortiumSchema

        schema = ConsortiumSchema.read(args.schema)
    failed = False
    for folder in args.folders:
        if args.min_cell is not None and args.min_cell < 1:
            raise ValueError(f"--min-cell must be at least 1, got {args.min_cell}")
        report = check_site_folder(folder, args.min_cell, schema)
        if report.site is not None:
            _print_summary(folder, report.site)
        for warning in report.warnings:
            print(f"  warning: {warning}")
        for error in report.errors:
            print(f"  problem: {error}", file=sys.stderr)
        if not report.ok:
            print(
                f"{folder}: {len(report.errors)} problem(s); the site cannot join a run until they are fixed",
                file=sys.stderr,
            )
            failed = True
        elif args.show_outgoing and report.site is not None:
            runtime = SiteRuntime.from_site_data(report.site, report.min_cell)
            print("  outgoing (besides model weights):")
            print(textwrap.indent(json.dumps(runtime.outgoing(), indent=2), "    "))
    return 2 if failed else 0


def _print_summary(folder: Path, data) -> None:
    summary = data.summary()
    roles = ", ".join(f"{n} {r}" for r, n in summary["roles"].items())
    print(f"{folder}: site {summary['name']!r}, task {summary['task']}, patients with a role: {roles}")
    for modality, counts in summary["modalities"].items():
        per_role = ", ".join(f"{counts[r]} {r}" for r in summary["roles"])
        print(f"  {modality:<16} {counts['kind']:<10} {per_role}")
    unused = summary["labelled_without_data"]
    if unused:
        shown = ", ".join(unused[:10]) + (", ..." if len(unused) > 10 else "")
        print(f"  {len(unused)} labelled patients hold no modality and are not used: {shown}")
    print(f"  sha256 {data.sha256}")


def _add_schema(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "schema",
        help="write the consortium's data contract from reference site folders",
        description="Reads reference site folders and writes their schema (each modality from the first folder "
        "holding it; task and labels from the first folder): task, survival time unit, per modality "
        "the columns with their types, ranges rounded outward (no patient's exact value) and the categories and "
        "lab variables held by at least min-cell patients. Edit it if needed (units), send it to every hospital, "
        "and check folders with `fedlego check FOLDER --schema FILE`.",
    )
    p.add_argument("folders", type=Path, nargs="+", metavar="FOLDER", help="reference site folder(s)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="the schema file to write (JSON)")
    p.add_argument(
        "--time-unit",
        choices=TIME_UNITS,
        help="unit of the survival times (default: what site.json's time_unit says, else days)",
    )
    p.add_argument("--min-cell", type=int, default=DEFAULT_MIN_CELL, help="fewest patients behind a category kept")
    p.add_argument(
        "--outcome",
        metavar="TEXT",
        help='what the event (survival) or positive class is, e.g. "death from any cause": every report names it',
    )
    p.set_defaults(handler=_schema)


def _schema(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fedlego.common.data.schema import schema_from_site, schema_hash
    from fedlego.common.data.sitefolder import read_site_folder

    sites = [read_site_folder(f) for f in args.folders]
    schemas = [
        schema_from_site(s, max(args.min_cell, s.min_cell or 1), args.time_unit, outcome=args.outcome) for s in sites
    ]
    tasks = {s.task for s in schemas}
    if len(tasks) > 1:
        raise SystemExit(f"fedlego schema: the reference folders disagree on the task: {sorted(tasks)}")
    modalities: dict = {}
    for each in schemas:
        modalities |= {n: spec for n, spec in each.modalities.items() if n not in modalities}
    schema = replace(schemas[0], modalities=modalities)
    schema.write(args.out)
    columns = sum(len(getattr(spec, "columns", {}) or {}) for spec in schema.modalities.values())
    print(f"{args.out}: {len(schema.modalities)} modalities, {columns} table columns, sha256 {schema_hash(schema)}")
    print(f"  every site: fedlego check FOLDER --schema {args.out}; fedlego site ... --schema {args.out}")
    return 0


def _add_pretrain(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pre-train a tabular encoder on a site folder's unlabelled features (denoising autoencoder)",
        description="Fits the modality's preprocessing on the folder's training patients (as its block will), "
        "trains the reference SNN encoder to denoise their features (labels are not used; early stopping on the "
        "validation patients' reconstruction), saves it as safetensors, adds it to the model store and prints "
        "the site.json entry that uses it frozen.",
    )
    p.add_argument("--data", type=Path, required=True, metavar="FOLDER", help="site folder")
    p.add_argument("--modality", required=True, help="a tabular modality of the folder")
    p.add_argument("--width", type=int, default=64, help="width of the encoder to pre-train (default 64)")
    p.add_argument("--epochs", type=int, default=200, help="training epochs (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and masking (default 0)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="the .safetensors file to write")
    p.set_defaults(handler=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    from fedlego.common.data.kinds.tabular import TabularKind
    from fedlego.common.data.sitefolder import read_site_folder
    from fedlego.common.data.tensors import fit_preprocessors, make_tensor_set
    from fedlego.common.model_store import add_to_store, save_weights, store_folder
    from fedlego.common.pretraining import PretrainConfig, pretrain_tabular_encoder

    data = read_site_folder(args.data)
    if args.modality not in data.dataset.modalities or data.dataset.modalities[args.modality].kind != TabularKind.name:
        raise ValueError(
            f"{args.data}: no tabular modality {args.modality!r} (it has {sorted(data.dataset.modalities)})"
        )
    holding = set(data.dataset.modalities[args.modality].patient_ids())
    train = [i for i in data.roles["train"] if i in holding]
    validation = [i for i in data.roles["validation"] if i in holding]
    preprocessors = fit_preprocessors(data.dataset.subset(data.dataset.patient_ids(), [args.modality]), train)
    tensors = make_tensor_set(data.dataset, preprocessors, train + validation).inputs[args.modality]["x"]
    config = PretrainConfig(width=args.width, epochs=args.epochs, seed=args.seed)
    encoder, report = pretrain_tabular_encoder(tensors[: len(train)], tensors[len(train) :], config)
    save_weights(encoder, args.out)
    sha = add_to_store(args.out)
    print(
        f"pre-trained on {len(train)} patients ({tensors.shape[1]} features), best epoch {report.best_epoch}, "
        f"validation reconstruction MSE {min(report.validation_loss):.4f}"
    )
    print(f"wrote {args.out} (sha256 {sha}); added to the model store {store_folder()}")
    entry = {
        "name": "snn",
        "kwargs": {"in_features": int(tensors.shape[1]), "width": args.width, "dropout": config.dropout},
        "weights": str(args.out),
        "frozen": True,
    }
    print(f'site.json: "modalities": {{"{args.modality}": {{..., "encoder": {json.dumps(entry)}}}}}')
    return 0


def _add_models(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="the local model store of pre-trained encoder weights (found by SHA-256)",
        description="Packages of frozen encoders name their weights by SHA-256; every party loads them from its "
        "model store (FEDLEGO_MODEL_STORE, default ~/.cache/fedlego/models).",
    )
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="copy weights files into the store (safetensors, or weights-only torch)")
    add.add_argument("files", type=Path, nargs="+", help="weights files to copy into the store")
    add.set_defaults(handler=_models_add)
    listing = actions.add_parser("list", help="the weights in the store")
    listing.set_defaults(handler=_models_list)


def _models_add(args: argparse.Namespace) -> int:
    from fedlego.common.model_store import add_to_store, store_folder

    for file in args.files:
        print(f"{add_to_store(file)}  {file} -> {store_folder()}")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from fedlego.common.model_store import store_folder

    files = sorted(store_folder().glob("*.safetensors"))
    for file in files:
        print(f"{file.stem}  {file.stat().st_size} bytes")
    if not files:
        print(f"no encoder weights in the model store ({store_folder()}); `fedlego models add FILE` adds one")
    return 0


def _add_config(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config",
        help="print every run-config key with its default (the Flower app's [tool.flwr.app.config])",
        description="Every run-config key with its default and meaning, as TOML. The same keys are the options "
        "of `fedlego centralized`, `--set KEY=VALUE` of `fedlego simulate` and `fedlego run`.",
    )
    p.set_defaults(handler=_config)


def _config(args: argparse.Namespace) -> int:
    from fedlego.common.config import app_config_toml

    print(app_config_toml(), end="")
    return 0


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict with a trained model package on a site folder (no labels needed)",
        description="Load a merged or fused model package (or a block package), verify it, transform the site "
        "folder's data with the preprocessing stored in the package and write one row per patient: patient_id, "
        "the modalities used, and risk plus survival_at_<time>_<unit> (survival) or p_<class> (classification); "
        "a sidecar <out>.columns.json says what each column holds.",
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
    sidecar = args.out.with_suffix(".columns.json")
    described = {"model": args.model.name, "columns": frame.attrs.get("columns", {})}
    try:
        frame.to_csv(args.out, index=False)
        sidecar.write_text(json.dumps(described, indent=2) + "\n")
    except OSError as error:
        raise ValueError(f"{args.out}: cannot write the predictions ({error.strerror or error})") from error
    print(f"{len(frame)} patients predicted with {args.model}; written to {args.out} (columns described in {sidecar})")
    return 0


def _add_deployment(subparsers: argparse._SubParsersAction) -> None:
    """certs, export-sites, superlink, site, run and stop (handlers in ``fedlego.deploy``)."""
    from fedlego import deploy

    p = subparsers.add_parser(
        "certs",
        help="make (or complete) a consortium's keys and certificates",
        description="Creates under OUT a CA, the SuperLink's TLS certificate, the coordinator's signing key and "
        "trusted-sites.json, and per site a node-auth key pair, a signing key pair and the public files it needs. "
        "Re-running adds what is missing (e.g. a new --site) and never overwrites a key.",
    )
    p.add_argument(
        "action",
        nargs="?",
        default="make",
        choices=["make", "request", "sign", "renew", "status"],
        help="make (default): create or complete the consortium folder; request: at a hospital, make its own "
        "keys and request.json (public keys only); sign: at the CA, add a hospital from its request.json; "
        "renew: re-issue the CA and SuperLink certificates (same keys); status: certificates and days left",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="the consortium folder (make, sign, renew, status) or, for request, the hospital's own key folder",
    )
    p.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="NAME",
        help="a site name as in its site.json (repeatable for make; exactly one for request)",
    )
    p.add_argument(
        "--server-name",
        action="append",
        metavar="NAME",
        help="a host name or IP the SuperLink is reached at (repeatable), added to 127.0.0.1 and localhost; "
        "a certificate with other names is re-issued for the same key",
    )
    p.add_argument("--request", type=Path, metavar="FILE", help="sign: a hospital's request.json")
    p.add_argument("--keys", type=Path, metavar="KEY_DIR", help="status: a site's key folder instead of --out")
    add_deprecated(p, "--certs", "--keys", "keys", type=Path)
    p.set_defaults(handler=deploy.cmd_certs)

    p = subparsers.add_parser(
        "export-sites",
        help="write one site folder per scenario site (hospital-like data folders for tests and demos)",
        description="Cut a bundled or synthetic cohort into sites as `fedlego simulate` does and write each "
        "as a site folder OUT/<site>/ (site.json, labels, one file per modality, split.csv of the global fold).",
    )
    add_scenario_arguments(p)
    add_set_argument(p)
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder to write one site folder per site into"
    )
    p.set_defaults(handler=deploy.cmd_export_sites)

    p = subparsers.add_parser(
        "superlink",
        help="coordinator: run a Flower SuperLink (deployment mode) in the foreground",
        description="Starts flower-superlink serving its Fleet, Control and Runtime APIs on HOST:PORT. "
        "The ServerApp of each run executes here, in --home.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to accept other machines)")
    p.add_argument("--port", type=int, required=True, help="port the SuperLink listens on for the sites (e.g. 9092)")
    p.add_argument("--home", type=Path, required=True, help="FLWR_HOME and working directory of the SuperLink")
    p.add_argument(
        "--certs",
        type=Path,
        metavar="DIR",
        help="the consortium folder of `fedlego certs`: TLS, SuperNode authentication, registers "
        "DIR/coordinator/node-auth/*.pub",
    )
    p.add_argument("--insecure", action="store_true", help=deploy.INSECURE_HELP)
    p.set_defaults(handler=deploy.cmd_superlink)

    p = subparsers.add_parser(
        "site",
        help="hospital: run a Flower SuperNode on a site folder in the foreground",
        description="Validates the site folder, then starts flower-supernode connected to the SuperLink.",
    )
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the coordinator's SuperLink address")
    p.add_argument("--data", type=Path, metavar="FOLDER", help="the site folder (site.json, labels, modalities)")
    add_deprecated(p, "--data-dir", "--data", "data", type=Path)
    p.add_argument("--port", type=int, help="local port of the SuperNode's runtime API (default: a free one)")
    p.add_argument("--home", type=Path, help="FLWR_HOME of the SuperNode (default: a temporary folder)")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for training (default: OMP_NUM_THREADS, else half the cores, at most 4); "
        "sites sharing one machine should split its cores between them",
    )
    p.add_argument(
        "--no-warm-worker",
        dest="warm_worker",
        action="store_false",
        help="run each message in a fresh ClientApp process that imports PyTorch and fedlego anew (Flower's "
        "default, a few seconds slower per message) instead of a child forked from this site's warm worker",
    )
    p.add_argument(
        "--keys",
        type=Path,
        metavar="KEY_DIR",
        help="this site's key folder (`fedlego certs request`, or sites/<name> of `fedlego certs`): TLS, node key, "
        "package signing, models checked against the coordinator's key",
    )
    add_deprecated(p, "--certs", "--keys", "keys", type=Path)
    p.add_argument(
        "--audit-dir",
        type=Path,
        metavar="DIR",
        help="writable folder where this site keeps the coordinator's signed audit heads, one file per run "
        "(default $XDG_STATE_HOME/fedlego/<site>/audit-heads; check them with `fedlego audit verify --site-copy`)",
    )
    p.add_argument(
        "--schema",
        type=Path,
        metavar="FILE",
        help="the consortium schema (`fedlego schema`): the site refuses to start when its data break it, and "
        "tells the coordinator which schema it checked",
    )
    p.add_argument(
        "--min-cell",
        type=int,
        metavar="N",
        help=f"this site's disclosure floor: fewest patients behind anything it sends (default: site.json's "
        f"min_cell, else {DEFAULT_MIN_CELL}); a run's min-cell can raise it, never lower it",
    )
    p.add_argument("--insecure", action="store_true", help=deploy.INSECURE_HELP)
    p.add_argument(
        "--check",
        action="store_true",
        help="preflight: check the data folder, key folder, the SuperLink (name, TLS, health) and this site's "
        "node key, then exit without joining a run",
    )
    p.set_defaults(handler=deploy.cmd_site)

    p = subparsers.add_parser(
        "run",
        help="coordinator: run the federation on a SuperLink and print the results",
        description="Submits the fedlego Flower app to the SuperLink (flwr run --stream) with the run config "
        "overrides; the ServerApp writes OUT/results.json and OUT/packages/ on the SuperLink's machine.",
    )
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address (its control API)")
    p.add_argument(
        "--certs",
        type=Path,
        metavar="DIR",
        help="the consortium folder of `fedlego certs`: verifies the SuperLink with DIR/superlink/ca.pem and "
        "sets trusted-sites and coordinator-key from DIR/coordinator (paths read on the SuperLink's machine)",
    )
    p.add_argument("--insecure", action="store_true", help=deploy.INSECURE_HELP)
    p.add_argument("--out", type=Path, required=True, help="output folder (absolute path on the SuperLink's machine)")
    add_set_argument(p)
    p.add_argument("--timeout", type=float, help="give up after this many seconds")
    p.add_argument(
        "--check",
        action="store_true",
        help="preflight: check the settings, the consortium folder, the SuperLink and how many registered sites "
        "are online, then exit without starting a run",
    )
    p.set_defaults(handler=deploy.cmd_run)

    p = subparsers.add_parser(
        "stop",
        help="coordinator: stop a run at the SuperLink and record it (results.json, audit log)",
        description="Stops the run that `fedlego run --out OUT` started (flwr stop), waits until the SuperLink "
        "has finished it, then records status stopped and a run-stopped audit entry in OUT (on the SuperLink's "
        "machine), unless the run had already ended on record.",
    )
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address (its control API)")
    p.add_argument("--certs", type=Path, metavar="DIR", help="the consortium folder of `fedlego certs` (TLS)")
    p.add_argument("--insecure", action="store_true", help=deploy.INSECURE_HELP)
    p.add_argument("--out", type=Path, required=True, help="the run's output folder, as given to `fedlego run`")
    p.add_argument("--run-id", help="the Flower run id (default: the one OUT/.flower/run.log names)")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the run to finish (default 60)")
    p.set_defaults(handler=deploy.cmd_stop)


def _add_audit(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("audit", help="check a coordinator's audit log")
    actions = p.add_subparsers(dest="action", required=True)
    verify = actions.add_parser(
        "verify",
        help="detect modified, deleted, reordered or rewritten entries",
        description="Checks the hash chain of a run's audit.jsonl; with --results that no entry was cut off the "
        "end; with --site-copy that the log still holds every head a site was sent (a log rewritten after the "
        "fact disagrees); with --coordinator-key that those heads and the results' head are the coordinator's.",
    )
    verify.add_argument("log", type=Path, help="the run's audit.jsonl")
    verify.add_argument("--results", type=Path, help="the run's results.json (its audit_head catches cut-off entries)")
    verify.add_argument(
        "--site-copy",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a site's file of received audit heads (its --audit-dir/<run>.jsonl; repeatable)",
    )
    verify.add_argument(
        "--coordinator-key",
        type=Path,
        metavar="PUB",
        help="the coordinator's public key (a site's coordinator.pub): every head must carry its signature",
    )
    verify.set_defaults(handler=_audit_verify)


def _audit_verify(args: argparse.Namespace) -> int:
    from fedlego.common.audit_head import AuditHead
    from fedlego.common.signing import load_public_key
    from fedlego.server.audit import check_results_signature, check_site_copies, verify_log
    from fedlego.server.results import RunResults

    key = load_public_key(args.coordinator_key) if args.coordinator_key else None
    results = RunResults.read(args.results) if args.results is not None else None
    report = verify_log(args.log, results.audit_head if results else None)
    if not report.ok:
        print(f"{args.log}: TAMPERED: {report.problem}", file=sys.stderr)
        return 1
    problems = []
    if key is not None and results is not None:
        signed = AuditHead(results.run_id, report.entries, report.head, results.audit_signature or "")
        problems += [p for p in [check_results_signature(signed, key)] if p]
    for copy, found in check_site_copies(args.log, args.site_copy, key).items():
        problems += [f"{copy}: {problem}" for problem in found]
    if problems:
        for problem in problems:
            print(f"{args.log}: TAMPERED: {problem}", file=sys.stderr)
        return 1
    checked = f"; {len(args.site_copy)} site copies agree" if args.site_copy else ""
    signed = "; heads signed by the coordinator" if key is not None else ""
    print(f"{args.log}: {report.entries} entries, chain intact, head {report.head}{checked}{signed}")
    return 0


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
    from fedlego.server.results import RunResults

    path = write_report(RunResults.read(args.results), args.out or args.results.parent)
    print(f"report in {path}")
    return 0


def _version_line() -> str:
    """``fedlego X.Y.Z`` and the installed plugins' versions (what ``--version`` prints)."""
    from fedlego.common.versions import software_versions

    versions = software_versions()
    plugins = ", ".join(f"{name} {version}" for name, version in versions.items() if name != "fedlego")
    return f"fedlego {versions['fedlego']}" + (f" (plugins: {plugins})" if plugins else " (no plugins)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedlego`` command."""
    parser = argparse.ArgumentParser(prog="fedlego", description="Federated multimodal model merging (MM-Lego).")
    parser.add_argument("--version", action="version", version=_version_line(), help="fedlego's and plugins' versions")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_centralized(subparsers)
    _add_simulate(subparsers)
    _add_config(subparsers)
    _add_check(subparsers)
    _add_schema(subparsers)
    _add_pretrain(subparsers)
    _add_models(subparsers)
    _add_predict(subparsers)
    _add_audit(subparsers)
    _add_report(subparsers)
    _add_deployment(subparsers)
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
