"""Deployment: the federation as separate processes (a coordinator and one process per hospital).

- ``fedlego export-sites``: one site folder per scenario site (a hospital-like data folder).
- ``fedlego superlink``: the coordinator's Flower SuperLink (deployment mode), in the foreground.
- ``fedlego site``: a hospital's Flower SuperNode reading its site folder, in the foreground.
- ``fedlego run``: submit the fedlego app to a SuperLink, stream its progress, print the results.

TLS and SuperNode authentication are not built yet: every command requires an explicit
``--insecure`` and warns that traffic is unencrypted and sites unauthenticated.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedlego.simulation import (
    _is_progress,
    _wait_healthy,
    app_folder,
    free_port,
    quiet_environment,
    stop_process_group,
    tool,
    write_run_config,
)

CONNECTION = "fedlego"
INSECURE_REQUIRED = (
    "TLS and site authentication are not built yet: pass --insecure explicitly "
    "(only on a trusted network: traffic is unencrypted and sites are unauthenticated)"
)
INSECURE_WARNING = (
    "fedlego: WARNING: running with --insecure: traffic is NOT encrypted and sites are NOT "
    "authenticated; use only on a trusted network"
)
SCENARIO_KEYS = (
    "dataset",
    "task",
    "modalities",
    "layout",
    "paired-sites",
    "paired-fraction",
    "sites-per-modality",
    "overlap",
    "missing-rate",
    "imbalance",
    "synthetic-patients",
    "synthetic-modalities",
    "seed",
    "fold",
)
"""Run-config keys that decide how ``export-sites`` cuts a cohort into site folders."""


class DeploymentError(RuntimeError):
    """A deployment command cannot start (missing --insecure, bad address, ...)."""


def _require_insecure(insecure: bool) -> None:
    if not insecure:
        raise DeploymentError(INSECURE_REQUIRED)
    print(INSECURE_WARNING, file=sys.stderr, flush=True)


def _check_address(address: str) -> str:
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise DeploymentError(f"expected HOST:PORT for the SuperLink address, got {address!r}")
    return address


# --------------------------------------------------------------------------- site folders


def export_sites(overrides: Mapping[str, Any], out: Path) -> list[tuple[str, Path, list[str]]]:
    """Write one site folder per scenario site under ``out/<site-name>``, with ``split.csv`` from
    the run's global fold (the same sites and roles as ``fedlego simulate``).

    Returns (site name, folder, modalities) per site.
    """
    from fedlego.common.data.scenarios import dataset_splits
    from fedlego.common.data.sitefolder import write_site_folder
    from fedlego.common.federation import FederationSettings, scenario_dataset, simulated_scenario

    settings = FederationSettings.from_run_config(overrides)
    if settings.extra:
        raise ValueError(f"unknown run-config keys {sorted(settings.extra)}")
    dataset = scenario_dataset(settings)
    scenario = simulated_scenario(settings, dataset)
    split = dataset_splits(dataset, n_folds=settings.fold + 1, seed=settings.seed)[settings.fold]
    out = Path(out)
    written = []
    for spec in scenario.sites:
        folder = write_site_folder(dataset, spec, split, out / spec.name)
        written.append((spec.name, folder, list(spec.modalities)))
    return written


# --------------------------------------------------------------------------- commands


def superlink_command(host: str, port: int) -> list[str]:
    """``flower-superlink`` in deployment mode (insecure, ServerApp in a subprocess, state in memory)."""
    return [
        tool("flower-superlink"),
        "--insecure",
        "--isolation",
        "subprocess",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        ":flwr-in-memory:",
    ]


def node_config(data_dir: Path) -> str:
    """The SuperNode's ``--node-config`` value pointing at a site folder (absolute path)."""
    path = str(Path(data_dir).resolve())
    if "'" not in path:
        return f"data-dir='{path}'"
    if '"' not in path and "\\" not in path:
        return f'data-dir="{path}"'
    raise DeploymentError(f"cannot pass a site folder path with both quote kinds to Flower: {path!r}")


def supernode_command(superlink: str, data_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """``flower-supernode`` (insecure) connected to ``superlink``, reading the site folder."""
    return [
        tool("flower-supernode"),
        "--insecure",
        "--superlink",
        _check_address(superlink),
        "--node-config",
        node_config(data_dir),
        "--isolation",
        "subprocess",
        "--host",
        host,
        "--port",
        str(port),
    ]


def validate_site_folder(data_dir: Path):
    """Read the site folder as the SuperNode will; raises SiteDataError naming the file."""
    from fedlego.common.data.sitefolder import read_site_folder

    return read_site_folder(Path(data_dir))


# --------------------------------------------------------------------------- foreground processes


def _foreground(command: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> int:
    """Run a Flower process in the foreground until it exits or we are interrupted/terminated.

    The child stays in our process group (Ctrl-C, or a kill of the group, reaches it directly);
    on SIGTERM/SIGINT to this process alone the child is stopped too before we return.
    """
    process = subprocess.Popen(list(command), env=dict(env), cwd=cwd)

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return process.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serve_superlink(host: str, port: int, home: Path) -> int:
    """``fedlego superlink``: the coordinator's SuperLink in the foreground (working dir ``home``)."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    command = superlink_command(host, port)
    print(f"fedlego superlink: {host}:{port} (Fleet, Control and Runtime APIs), home {home}", flush=True)
    return _foreground(command, quiet_environment(home), cwd=home)


def serve_site(superlink: str, data_dir: Path, port: int | None, home: Path | None) -> int:
    """``fedlego site``: validate the site folder, then run the hospital's SuperNode in the foreground."""
    data = validate_site_folder(data_dir)
    counts = {role: len(ids) for role, ids in data.roles.items()}
    print(
        f"fedlego site: {data.name} ({', '.join(sorted(data.dataset.modalities))}; patients per role {counts}) "
        f"-> SuperLink {superlink}",
        flush=True,
    )
    command = supernode_command(superlink, data_dir, port or free_port())
    if home is not None:
        Path(home).mkdir(parents=True, exist_ok=True)
        return _foreground(command, quiet_environment(Path(home).resolve()))
    with tempfile.TemporaryDirectory(prefix="fedlego-site-") as temporary:
        return _foreground(command, quiet_environment(Path(temporary)))


# --------------------------------------------------------------------------- background (tests, demos)


def start_background(command: Sequence[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    """Start a process in its own session (stop it with ``stop_process_group``), output to a log."""
    with Path(log_path).open("w") as log:
        return subprocess.Popen(
            list(command), env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextmanager
def local_superlink(home: Path, port: int | None = None) -> Iterator[tuple[int, subprocess.Popen]]:
    """A deployment-mode SuperLink on loopback, ready when yielded (port, process); stopped after."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    with (home / "superlink.log").open("w") as log:
        process = subprocess.Popen(
            superlink_command("127.0.0.1", port),
            env=quiet_environment(home),
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(port, process)
        yield port, process
    finally:
        stop_process_group(process)


# --------------------------------------------------------------------------- the run


def write_connection(flwr_home: Path, superlink: str) -> None:
    """An isolated ``FLWR_HOME/config.toml`` with one insecure connection named ``fedlego``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{_check_address(superlink)}"\ninsecure = true\n'
    )


def run_deployment(
    superlink: str,
    overrides: Mapping[str, Any],
    out_dir: Path,
    timeout: float | None = None,
    echo: Callable[[str], None] = lambda line: print(line, flush=True),
) -> dict[str, Any]:
    """Submit the fedlego app to ``superlink`` with ``flwr run --stream``; returns results.json.

    ``out_dir`` is written by the ServerApp, which runs on the SuperLink's machine: results are
    read back here only when this machine is that one (or shares the folder).
    """
    out_dir = Path(out_dir).resolve()
    work = out_dir / ".flower"
    if work.exists():
        shutil.rmtree(work)
    flwr_home = work / "home"
    write_connection(flwr_home, superlink)
    app = app_folder(work / "app")
    run_config = write_run_config({**overrides, "out-dir": str(out_dir)}, work / "run-config.toml")
    results_path = out_dir / "results.json"
    results_path.unlink(missing_ok=True)
    command = [tool("flwr"), "run", str(app), CONNECTION, "--stream", "--run-config", str(run_config)]
    log_path = work / "run.log"
    start = time.monotonic()
    process = subprocess.Popen(
        command,
        env=quiet_environment(flwr_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    run_id = ""
    watchdog = threading.Timer(timeout, stop_process_group, [process]) if timeout else None
    try:
        if watchdog is not None:
            watchdog.start()
        assert process.stdout is not None
        with log_path.open("w") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if line.startswith("Successfully started run "):
                    run_id = line.split()[-1]
                if _is_progress(line):
                    echo(line.rstrip())
        process.wait(timeout=30)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        stop_process_group(process)
    if timeout and time.monotonic() - start >= timeout:
        if run_id:  # the ServerApp keeps running on the SuperLink unless the run is stopped there
            subprocess.run(
                [tool("flwr"), "stop", run_id, CONNECTION],
                env=quiet_environment(flwr_home),
                capture_output=True,
                timeout=60,
                check=False,
            )
        raise DeploymentError(f"the run took longer than {timeout:.0f} s and was stopped (log: {log_path})")
    if process.returncode != 0:
        raise DeploymentError(f"flwr run exited with code {process.returncode} (log: {log_path})")
    if not results_path.exists():
        raise DeploymentError(
            f"no results in {results_path}: the ServerApp writes them on the SuperLink's machine (log: {log_path})"
        )
    return json.loads(results_path.read_text())


# --------------------------------------------------------------------------- command line


def _overrides(items: Sequence[str]) -> dict[str, Any]:
    from fedlego.cli import _parse_value

    overrides: dict[str, Any] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = _parse_value(value.strip())
    return overrides


def _check_settings(overrides: Mapping[str, Any]) -> None:
    from fedlego.common.federation import FederationSettings

    settings = FederationSettings.from_run_config(overrides)
    if settings.extra:
        raise ValueError(f"unknown run-config keys {sorted(settings.extra)} (see fedlego/flwr_app/pyproject.toml)")


def _export_sites(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        "dataset": args.scenario,
        "task": args.task,
        "layout": args.layout,
        "sites-per-modality": args.sites_per_modality,
        "paired-sites": args.paired_sites,
        "paired-fraction": args.paired_fraction,
        "overlap": args.overlap,
        "missing-rate": args.missing_rate,
        "imbalance": args.imbalance,
        "synthetic-patients": args.synthetic_patients,
        "synthetic-modalities": args.synthetic_modalities,
        "seed": args.seed,
        "fold": args.fold,
    }
    if args.modalities:
        overrides["modalities"] = args.modalities
    written = export_sites(overrides, args.out)
    for name, folder, modalities in written:
        print(f"{name:<14} {'+'.join(modalities):<30} {folder}")
    print(
        f"{len(written)} site folders in {args.out}; start one `fedlego site --data-dir <folder>` per site and "
        f"`fedlego run ... --set dataset={args.scenario} min-sites={len(written)}`"
    )
    return 0


def _superlink(args: argparse.Namespace) -> int:
    _require_insecure(args.insecure)
    return serve_superlink(args.host, args.port, args.home)


def _site(args: argparse.Namespace) -> int:
    _check_address(args.superlink)
    if not args.insecure:
        raise DeploymentError(INSECURE_REQUIRED)
    validate_site_folder(args.data_dir)  # a bad folder fails before any warning or connection
    _require_insecure(args.insecure)
    return serve_site(args.superlink, args.data_dir, args.port, args.home)


def _run(args: argparse.Namespace) -> int:
    from fedlego.common.coordinator import format_federation_table

    _check_address(args.superlink)
    _require_insecure(args.insecure)
    overrides = _overrides(args.set)
    _check_settings(overrides)
    results = run_deployment(args.superlink, overrides, args.out, timeout=args.timeout)
    print(format_federation_table(results))
    phases = ", ".join(f"{name} {v['seconds']:.1f} s" for name, v in results.get("phases", {}).items())
    print(f"status {results.get('status')}; wall time {results.get('wall_seconds', 0.0):.1f} s ({phases})")
    if results.get("error"):
        print(f"error: {results['error']}")
    print(f"results in {args.out / 'results.json'}, packages in {args.out / 'packages'}")
    return 0 if results.get("status") == "completed" else 1


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register export-sites, superlink, site and run on the ``fedlego`` parser."""
    p = subparsers.add_parser(
        "export-sites",
        help="write one site folder per scenario site (hospital-like data folders for tests and demos)",
        description="Cut a bundled or synthetic cohort into sites as `fedlego simulate` does and write each "
        "as a site folder OUT/<site>/ (site.json, labels, one file per modality, split.csv of the global fold).",
    )
    p.add_argument("--scenario", choices=["pbc", "synthetic", "tcga-acc"], default="tcga-acc")
    p.add_argument("--modalities", help="comma-separated modalities (default: the dataset's preset)")
    p.add_argument("--task", choices=["survival", "binary"], default="survival", help="PBC only: outcome")
    p.add_argument("--layout", default="modality-sites", help="modality-sites (default) or pooled")
    p.add_argument("--sites-per-modality", type=int, default=1)
    p.add_argument("--paired-sites", type=int, default=1)
    p.add_argument("--paired-fraction", type=float, default=0.3)
    p.add_argument("--overlap", type=float, default=0.0)
    p.add_argument("--missing-rate", type=float, default=0.0)
    p.add_argument("--imbalance", type=float, default=0.0)
    p.add_argument("--synthetic-patients", type=int, default=300)
    p.add_argument("--synthetic-modalities", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fold", type=int, default=0, help="which patient-level fold gives split.csv")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_export_sites)

    p = subparsers.add_parser(
        "superlink",
        help="coordinator: run a Flower SuperLink (deployment mode) in the foreground",
        description="Starts flower-superlink serving its Fleet, Control and Runtime APIs on HOST:PORT. "
        "The ServerApp of each run executes here, in --home.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to accept other machines)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--home", type=Path, required=True, help="FLWR_HOME and working directory of the SuperLink")
    p.add_argument("--insecure", action="store_true", help="required until TLS is built: no encryption, no auth")
    p.set_defaults(handler=_superlink)

    p = subparsers.add_parser(
        "site",
        help="hospital: run a Flower SuperNode on a site folder in the foreground",
        description="Validates the site folder, then starts flower-supernode connected to the SuperLink.",
    )
    p.add_argument("--superlink", required=True, metavar="HOST:PORT")
    p.add_argument("--data-dir", type=Path, required=True, help="the site folder (site.json, labels, modalities)")
    p.add_argument("--port", type=int, help="local port of the SuperNode's runtime API (default: a free one)")
    p.add_argument("--home", type=Path, help="FLWR_HOME of the SuperNode (default: a temporary folder)")
    p.add_argument("--insecure", action="store_true", help="required until TLS is built: no encryption, no auth")
    p.set_defaults(handler=_site)

    p = subparsers.add_parser(
        "run",
        help="coordinator: run the federation on a SuperLink and print the results",
        description="Submits the fedlego Flower app to the SuperLink (flwr run --stream) with the run config "
        "overrides; the ServerApp writes OUT/results.json and OUT/packages/ on the SuperLink's machine.",
    )
    p.add_argument("--superlink", required=True, metavar="HOST:PORT")
    p.add_argument("--insecure", action="store_true", help="required until TLS is built: no encryption, no auth")
    p.add_argument("--out", type=Path, required=True, help="output folder (absolute path on the SuperLink's machine)")
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="run-config keys (see fedlego/flwr_app/pyproject.toml), e.g. --set min-sites=5 fuse-rounds=1",
    )
    p.add_argument("--timeout", type=float, help="give up after this many seconds")
    p.set_defaults(handler=_run)
