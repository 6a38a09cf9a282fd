"""Deployment: the federation as separate processes (a coordinator and one process per hospital).

- ``fedlego export-sites``: one site folder per scenario site (a hospital-like data folder).
- ``fedlego superlink``: the coordinator's Flower SuperLink (deployment mode), in the foreground.
- ``fedlego site``: a hospital's Flower SuperNode reading its site folder, in the foreground.
- ``fedlego run``: submit the fedlego app to a SuperLink, stream its progress, print the results.

- ``fedlego certs``: the consortium's keys and certificates (``fedlego.certs``).

Secure by default: ``superlink``, ``site`` and ``run`` take ``--certs`` (TLS, SuperNode
authentication with registered node keys, signed packages, coordinator-signed models). Without
TLS they need an explicit ``--insecure`` and then warn loudly.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedlego.client.worker import site_worker
from fedlego.common.config import RunConfig, flat_fields
from fedlego.launcher import (
    CONNECTION,
    LaunchError,
    background_superlink,
    check_address,
    flwr_json,
    free_port,
    prepare_run,
    quiet_environment,
    stop_process,
    stream_run,
    superlink_command,
    tool,
    wait_ready,
    write_connection,
)
from fedlego.options import config_overrides, set_overrides
from fedlego.server.report import REPORT_NAME
from fedlego.server.results import RunResults, Signatures

SECURITY_REQUIRED = (
    "TLS is required: pass {option} {what} (made by `fedlego certs`), or --insecure explicitly "
    "(only on a trusted network: traffic is then unencrypted and sites are unauthenticated)"
)
SITE_SECURITY_REQUIRED = SECURITY_REQUIRED.format(option="--keys", what="KEY_DIR")
INSECURE_WARNING = "\n".join(
    [
        "*" * 78,
        "fedlego: WARNING: --insecure: traffic is NOT encrypted, sites are NOT authenticated,",
        "fedlego: WARNING: and packages and models are NOT signed. Anyone who can reach the",
        "fedlego: WARNING: SuperLink's port can join as a site or submit a run.",
        "fedlego: WARNING: Use only on a trusted network (loopback, private VPN, isolated subnet).",
        "*" * 78,
    ]
)
INTERRUPTED_EXIT = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""
NODE_REFUSED = 305
"""Exit code of ``flower-supernode`` when the SuperLink refuses to activate it (key not registered)."""
SITE_RETRIES = 6
SITE_RETRY_SECONDS = 10.0
SITE_STABLE_SECONDS = 120.0
"""A SuperNode that ran this long before ending is reconnected without counting an attempt."""
SITE_FILES = ("ca.pem", "node-auth", "signing.key", "coordinator.pub")
SUPERLINK_FILES = ("superlink/ca.pem", "superlink/server.pem", "superlink/server.key")
COORDINATOR_FILES = ("coordinator/trusted-sites.json", "coordinator/signing.key")
SCENARIO_KEYS = ("seed", *(key for key, (section, _, _) in flat_fields().items() if section.attribute == "scenario"))
"""Run-config keys that decide how ``export-sites`` cuts a cohort into site folders."""


INSECURE_HELP = "no TLS, no site authentication, no signatures (a loud warning; trusted networks only)"


class DeploymentError(LaunchError):
    """A deployment command cannot start (missing --insecure, bad address, ...)."""


class RunInterrupted(DeploymentError):
    """Ctrl-C on ``fedlego run``: the streaming stopped here, the run goes on at the SuperLink."""


def _require_security(certs: Path | None, insecure: bool, what: str, option: str = "--certs") -> None:
    """Exactly one of ``option`` (``--certs``, a site's ``--keys``) and ``--insecure``; warn loudly
    on ``--insecure``."""
    if certs is not None and insecure:
        raise DeploymentError(f"pass either {option} or --insecure, not both")
    if certs is None and not insecure:
        raise DeploymentError(SECURITY_REQUIRED.format(option=option, what=what))
    if insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)


def _check_files(folder: Path, names: Sequence[str], what: str) -> Path:
    """``folder`` resolved, with every file of ``names`` present (clear error otherwise)."""
    folder = Path(folder).resolve()
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DeploymentError(f"{folder} is not {what}: missing {', '.join(missing)} (see `fedlego certs`)")
    return folder


# --------------------------------------------------------------------------- site folders


def export_sites(overrides: Mapping[str, Any], out: Path) -> list[tuple[str, Path, list[str]]]:
    """Write one site folder per scenario site under ``out/<site-name>``, with ``split.csv`` from
    the run's global fold (the same sites and roles as ``fedlego simulate``).

    Returns (site name, folder, modalities) per site.
    """
    from fedlego.client.simulated import simulated_scenario
    from fedlego.common.data.presets import preprocessing_for, run_cohort
    from fedlego.common.data.scenarios import dataset_splits
    from fedlego.common.data.sitefolder import write_site_folder

    config = RunConfig.from_flat(overrides)
    dataset = run_cohort(config)
    scenario = simulated_scenario(config, dataset)
    fold = config.scenario.fold
    split = dataset_splits(dataset, n_folds=fold + 1, seed=config.seed)[fold]
    out = Path(out)
    written = []
    for spec in scenario.sites:
        folder = write_site_folder(dataset, spec, split, out / spec.name, preprocessing_for(config))
        written.append((spec.name, folder, list(spec.modalities)))
    return written


# --------------------------------------------------------------------------- commands


def _quoted(key: str, path: Path) -> str:
    text = str(Path(path).resolve())
    if "'" not in text:
        return f"{key}='{text}'"
    if '"' not in text and "\\" not in text:
        return f'{key}="{text}"'
    raise DeploymentError(f"cannot pass a path with both quote kinds to Flower: {text!r}")


def node_config(
    data_dir: Path,
    site_certs: Path | None = None,
    audit_dir: Path | None = None,
    schema: Path | None = None,
    min_cell: int | None = None,
) -> str:
    """The SuperNode's ``--node-config``: the site folder, the folder keeping the coordinator's
    audit heads, the consortium schema and, with a site's certs folder, the package signing key and
    the coordinator's public key (absolute paths)."""
    entries = [_quoted("data-dir", data_dir)]
    if schema is not None:
        entries.append(_quoted("schema", Path(schema).resolve()))
    if min_cell is not None:
        entries.append(f"min-cell={int(min_cell)}")
    if audit_dir is not None:
        entries.append(_quoted("audit-dir", audit_dir))
    if site_certs is not None:
        entries.append(_quoted("signing-key", Path(site_certs) / "signing.key"))
        entries.append(_quoted("coordinator-public-key", Path(site_certs) / "coordinator.pub"))
    return " ".join(entries)


def supernode_command(
    superlink: str,
    data_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    site_certs: Path | None = None,
    audit_dir: Path | None = None,
    schema: Path | None = None,
    min_cell: int | None = None,
) -> list[str]:
    """``flower-supernode`` connected to ``superlink``, reading the site folder: with
    ``site_certs`` (``fedlego certs``' ``sites/<name>``) over TLS with node authentication and
    signed packages, otherwise insecure."""
    if site_certs is None:
        security = ["--insecure"]
    else:
        site_certs = Path(site_certs).resolve()
        security = [
            "--root-certificates",
            str(site_certs / "ca.pem"),
            "--auth-supernode-private-key",
            str(site_certs / "node-auth"),
        ]
    return [
        tool("flower-supernode"),
        *security,
        "--superlink",
        check_address(superlink),
        "--node-config",
        node_config(data_dir, site_certs, audit_dir, schema, min_cell),
        "--isolation",
        "subprocess",
        "--host",
        host,
        "--port",
        str(port),
    ]


def validate_site_folder(data_dir: Path, schema: Path | None = None):
    """Read the site folder as the SuperNode will, and check it against the consortium schema;
    raises SiteDataError naming the file (every schema problem at once)."""
    from fedlego.client.runtime import SiteRuntime
    from fedlego.common.data.sitefolder import read_site_folder

    data = read_site_folder(Path(data_dir))
    if schema is not None:
        SiteRuntime.from_site_data(data).check_schema(data, Path(schema))
    return data


# --------------------------------------------------------------------------- foreground processes


def _foreground(
    command: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
    after_start: Callable[[subprocess.Popen], None] | None = None,
) -> int:
    """Run a Flower process in the foreground until it exits or we are interrupted/terminated.

    ``after_start(process)`` runs once the process is started (an error there stops it). The
    child stays in our process group (Ctrl-C, or a kill of the group, reaches it directly); on
    SIGTERM/SIGINT to this process alone the child is stopped too before we return.
    """
    process = subprocess.Popen(list(command), env=dict(env), cwd=cwd)

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if after_start is not None:
            after_start(process)
        return process.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_process(process)


def _server_names(certs: Path) -> list[str]:
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate((Path(certs) / "superlink" / "server.pem").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in names.get_values_for_type(x509.IPAddress)] + names.get_values_for_type(x509.DNSName)


def local_address(host: str, port: int, certs: Path | None = None) -> str:
    """How a process on the SuperLink's machine reaches it: a name its certificate holds."""
    wildcard = host in ("0.0.0.0", "::", "")
    candidates = ["127.0.0.1", "localhost"] if wildcard else [host]
    if certs is None:
        return f"{candidates[0]}:{port}"
    names = _server_names(certs)
    for name in [*candidates, *([n for n in names if not n[0].isdigit()] if wildcard else [])]:
        if name in names:
            return f"{name}:{port}"
    raise DeploymentError(
        f"the SuperLink certificate ({certs / 'superlink' / 'server.pem'}) names {names}, not {candidates[0]}: "
        f"`fedlego certs --out {certs} --server-name NAME` re-issues it with that name added (no key changes)"
    )


def register_node_keys(certs: Path, address: str, flwr_home: Path, echo: Callable[[str], None] = print) -> list[str]:
    """Register every ``certs/coordinator/node-auth/<site>.pub`` at the SuperLink (``flwr supernode
    register``) through an isolated connection in ``flwr_home``; returns the sites registered now or
    before (a key already registered is kept)."""
    certs = Path(certs).resolve()
    write_connection(flwr_home, address, certs / "superlink" / "ca.pem")
    keys = sorted((certs / "coordinator" / "node-auth").glob("*.pub"))
    if not keys:
        echo(f"fedlego superlink: WARNING: no node keys in {certs / 'coordinator' / 'node-auth'}: no site can join")
    registered = []
    for key in keys:
        answer = flwr_json(["supernode", "register", str(key), CONNECTION, "--name", key.stem], flwr_home)
        error = str(answer.get("error-message", ""))
        if answer.get("success"):
            echo(f"fedlego superlink: registered site {key.stem} (node id {answer.get('node-id')})")
        elif "already in use" in error:
            echo(f"fedlego superlink: site {key.stem} already registered")
        else:
            raise DeploymentError(f"cannot register the node key {key}: {error or answer}")
        registered.append(key.stem)
    return registered


def list_nodes(flwr_home: Path) -> list[dict[str, Any]]:
    """``flwr supernode list`` through the connection in ``flwr_home``: one dict per registered node."""
    answer = flwr_json(["supernode", "list", CONNECTION], flwr_home)
    if not answer.get("success"):
        raise DeploymentError(f"flwr supernode list failed: {answer.get('error-message', answer)}")
    return list(answer.get("nodes", []))


def serve_superlink(host: str, port: int, home: Path, certs: Path | None = None) -> int:
    """``fedlego superlink``: the coordinator's SuperLink in the foreground (working dir ``home``);
    with ``certs``, TLS and SuperNode authentication, the consortium's node keys registered once
    it is up (the SuperLink keeps them in memory: every start registers them again)."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    certs = None if certs is None else Path(certs).resolve()
    address = local_address(host, port, certs)
    command = superlink_command(host, port, certs)
    mode = "TLS + SuperNode authentication" if certs is not None else "INSECURE"
    print(f"fedlego superlink: {host}:{port} (Fleet, Control and Runtime APIs; {mode}), home {home}", flush=True)

    def _ready(process: subprocess.Popen) -> None:
        wait_ready(address, process, None if certs is None else certs / "superlink" / "ca.pem")
        if certs is not None:
            sites = register_node_keys(certs, address, home / "control", lambda line: print(line, flush=True))
            print(
                f"fedlego superlink: ready; {len(sites)} site keys registered; control connection: "
                f"FLWR_HOME={home / 'control'} flwr supernode list {CONNECTION}",
                flush=True,
            )
        else:
            print("fedlego superlink: ready (insecure)", flush=True)

    return _foreground(command, quiet_environment(home), cwd=home, after_start=_ready)


def check_site_certs(site_certs: Path) -> Path:
    """A site's certs folder (``fedlego certs``' ``sites/<name>``), resolved, complete and unexpired."""
    return check_expiry(_check_files(site_certs, SITE_FILES, "a site certs folder (sites/<name> of `fedlego certs`)"))


def check_expiry(certs: Path) -> Path:
    """Warn (stderr) about a certificate of ``certs`` that expires soon; refuse an expired one."""
    from fedlego.cert_status import expiry_problems

    try:
        warnings, errors = expiry_problems(certs)
    except ValueError as error:
        raise DeploymentError(str(error)) from error
    for warning in warnings:
        print(f"fedlego: warning: {warning}", file=sys.stderr)
    if errors:
        raise DeploymentError("; ".join(errors))
    return certs


def default_audit_dir(site: str) -> Path:
    """Where a site keeps the coordinator's audit heads by default:
    ``$XDG_STATE_HOME/fedlego/<site>/audit-heads`` (``~/.local/state`` without XDG_STATE_HOME)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "fedlego" / site / "audit-heads"


def writable_folder(folder: Path, option: str) -> Path:
    """``folder`` created if needed and resolved; a clear error when it cannot be written."""
    folder = Path(folder).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise DeploymentError(f"{option} {folder} is not a writable folder ({error.strerror or error})") from error
    return folder


def default_threads() -> int:
    """Training threads of a site unless ``--threads`` or ``OMP_NUM_THREADS`` say otherwise: half
    the cores, at most 4. Sites sharing a machine must not oversubscribe it: three sites of 2
    threads each on 2 cores trained 8x slower than with 1 thread each (measured ad hoc, 2026-12-01)."""
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def site_threads(threads: int | None) -> int:
    """The threads a site trains with: ``--threads``, else ``OMP_NUM_THREADS``, else the default."""
    if threads is not None:
        if threads < 1:
            raise DeploymentError(f"--threads must be at least 1, got {threads}")
        return threads
    configured = os.environ.get("OMP_NUM_THREADS", "")
    return int(configured) if configured.isdigit() and int(configured) > 0 else default_threads()


def serve_site(
    superlink: str,
    data_dir: Path,
    port: int | None,
    home: Path | None,
    site_certs: Path | None = None,
    threads: int | None = None,
    audit_dir: Path | None = None,
    schema: Path | None = None,
    min_cell: int | None = None,
    warm_worker: bool = True,
) -> int:
    """``fedlego site``: validate the site folder (against the consortium ``schema`` when given),
    then run the hospital's SuperNode in the foreground, training with ``threads`` CPU threads
    (``site_threads``) and keeping the coordinator's audit heads in ``audit_dir`` (default
    :func:`default_audit_dir`). A SuperNode that ends by itself (a SuperLink restarted and no longer
    knowing this node, or, with ``site_certs``, one that has not registered this site's key yet) is
    started again, until ``SITE_RETRIES`` ends in a row each within ``SITE_STABLE_SECONDS`` of
    starting. With ``warm_worker`` its messages run in children forked from a worker that has
    PyTorch and fedlego imported (``client.worker``), not in processes that import them anew."""
    data = validate_site_folder(data_dir, schema)
    audit_dir = writable_folder(audit_dir or default_audit_dir(data.name), "--audit-dir")
    counts = {role: len(ids) for role, ids in data.roles.items()}
    mode = "TLS, node key and package signing" if site_certs is not None else "INSECURE"
    threads = site_threads(threads)
    print(
        f"fedlego site: {data.name} ({', '.join(sorted(data.dataset.modalities))}; patients per role {counts}) "
        f"-> SuperLink {superlink} ({mode}; {threads} training threads); audit heads kept in {audit_dir}",
        flush=True,
    )
    if site_certs is not None and Path(site_certs).resolve().name != data.name:
        print(
            f"fedlego site: note: the certs folder is {Path(site_certs).name!r} but the site is {data.name!r}: "
            f"its packages are signed as {data.name!r}, so the coordinator's trusted-sites.json must list "
            "this signing key under that name",
            flush=True,
        )
    command = supernode_command(
        superlink,
        data_dir,
        port or free_port(),
        site_certs=site_certs,
        audit_dir=audit_dir,
        schema=schema,
        min_cell=min_cell,
    )
    with tempfile.TemporaryDirectory(prefix="fedlego-site-") as temporary:
        flwr_home = Path(home).resolve() if home is not None else Path(temporary)
        flwr_home.mkdir(parents=True, exist_ok=True)
        environment = {
            **quiet_environment(flwr_home),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
        with site_worker(environment, warm_worker) as reach_worker:
            return _supernode_until_stopped(command, {**environment, **reach_worker}, site_certs is not None)


def _supernode_until_stopped(command: list[str], environment: Mapping[str, str], secure: bool) -> int:
    """Run the SuperNode in the foreground, starting it again when it ends by itself (see
    :func:`serve_site`); its exit code once stopped or given up."""
    quick_ends = 0
    while True:
        started = time.monotonic()
        code = _foreground(command, environment)
        if code == INTERRUPTED_EXIT:  # stopped by Ctrl-C or SIGTERM: a wanted end
            return code
        quick_ends = quick_ends + 1 if time.monotonic() - started < SITE_STABLE_SECONDS else 1
        if code == NODE_REFUSED:
            reason = (
                f"fedlego site: the SuperLink refused or could not be reached (flower-supernode exit code "
                f"{code}); is this site's node-auth.pub registered at the SuperLink?"
            )
        else:  # e.g. the SuperLink restarted and no longer knows this node: connect anew
            reason = f"fedlego site: the SuperNode ended by itself (exit code {code}; the SuperLink restarted?)"
        if quick_ends >= SITE_RETRIES or (code == NODE_REFUSED and not secure):
            print(f"{reason} Giving up after {quick_ends} attempts.", file=sys.stderr, flush=True)
            return code
        print(
            f"{reason} Reconnecting in {SITE_RETRY_SECONDS:.0f} s ({quick_ends}/{SITE_RETRIES}).",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(SITE_RETRY_SECONDS)


# --------------------------------------------------------------------------- background (tests, demos)


@contextmanager
def local_superlink(
    home: Path, port: int | None = None, certs: Path | None = None
) -> Iterator[tuple[int, subprocess.Popen]]:
    """A deployment-mode SuperLink on loopback, ready when yielded (port, process); stopped after.
    With ``certs`` it runs with TLS and node authentication and the node keys are registered."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    certs = None if certs is None else Path(certs).resolve()
    address = local_address("127.0.0.1", port, certs)
    with background_superlink(home, home / "superlink.log", port, certs=certs, address=address, cwd=home) as process:
        if certs is not None:
            register_node_keys(certs, address, home / "control", lambda line: None)
        yield port, process


# --------------------------------------------------------------------------- the run


def run_deployment(
    superlink: str,
    overrides: Mapping[str, Any],
    out_dir: Path,
    timeout: float | None = None,
    echo: Callable[[str], None] = lambda line: print(line, flush=True),
    certs: Path | None = None,
) -> RunResults:
    """Submit the fedlego app to ``superlink`` with ``flwr run --stream``; returns its results.

    With ``certs`` (the ``fedlego certs`` folder) the connection verifies the SuperLink with the
    consortium CA and the run config gets ``trusted-sites`` and ``coordinator-key`` from
    ``certs/coordinator`` (unless given in ``overrides``): unsigned packages are then refused and
    merged/fused models signed. These paths, like ``out_dir``, are read and written by the
    ServerApp on the SuperLink's machine: results are read back here only when this machine is
    that one (or shares the folder).
    """
    overrides = dict(overrides)
    if certs is not None:
        certs = Path(certs).resolve()
        overrides.setdefault("trusted-sites", str(certs / "coordinator" / "trusted-sites.json"))
        overrides.setdefault("coordinator-key", str(certs / "coordinator" / "signing.key"))
    check_address(superlink)
    run = prepare_run(out_dir, overrides)
    write_connection(run.flwr_home, superlink, None if certs is None else certs / "superlink" / "ca.pem")
    log_path = run.work / "run.log"
    outcome = stream_run(run.app, run.run_config, run.flwr_home, echo=echo, log_path=log_path, timeout=timeout)
    if outcome.interrupted:
        security = f"--certs {certs}" if certs is not None else "--insecure"
        raise RunInterrupted(
            f"interrupted: only this command stopped; run {outcome.run_id or '(id not announced yet)'} goes on at "
            f"the SuperLink {superlink} and still writes to {run.out_dir}.\n"
            f"  to stop it: fedlego stop --superlink {superlink} {security} --out {run.out_dir}\n"
            f"  to follow it: the ServerApp's log is {log_path} only while this command runs; "
            f"results.json and audit.jsonl in {run.out_dir} grow as phases finish"
        )
    if outcome.timed_out:
        raise DeploymentError(f"the run took longer than {timeout:.0f} s and was stopped (log: {log_path})")
    if outcome.returncode != 0:
        raise DeploymentError(f"flwr run exited with code {outcome.returncode} (log: {log_path})")
    results = run.read_results()
    if results is None:
        raise DeploymentError(
            f"no results in {run.results}: the ServerApp writes them on the SuperLink's machine (log: {log_path})"
        )
    if results.status is None:
        raise DeploymentError(
            f"{run.results} records no outcome: the ServerApp ended before recording one (log: {log_path}); "
            f"`fedlego stop --superlink {superlink} "
            f"{f'--certs {certs}' if certs is not None else '--insecure'} --out {run.out_dir}` puts it on record"
        )
    return results


# --------------------------------------------------------------------------- command line


def _check_settings(overrides: Mapping[str, Any]) -> None:
    """Unknown run-config keys and bad values fail here, before anything is submitted."""
    RunConfig.from_flat(overrides)


def cmd_export_sites(args: argparse.Namespace) -> int:
    """``fedlego export-sites``: write the scenario's site folders."""
    overrides = config_overrides(args)
    written = export_sites(overrides, args.out)
    for name, folder, modalities in written:
        print(f"{name:<14} {'+'.join(modalities):<30} {folder}")
    print(
        f"{len(written)} site folders in {args.out}; start one `fedlego site --data <folder>` per site and "
        f"`fedlego run ... --set dataset={RunConfig.from_flat(overrides).scenario.dataset} min-sites={len(written)}`"
    )
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    """``fedlego certs [make|request|sign|renew|status]``: the consortium's keys and certificates."""
    from fedlego.cert_requests import RequestError

    needs = {"make": "--out", "renew": "--out", "sign": "--out and --request", "request": "--out and one --site"}
    if args.action in needs and (
        args.out is None
        or (args.action == "sign" and args.request is None)
        or (args.action == "request" and len(args.site) != 1)
    ):
        raise DeploymentError(f"fedlego certs {args.action} needs {needs[args.action]}")
    try:
        return CERTS_ACTIONS[args.action](args)
    except (RequestError, ValueError) as error:
        raise DeploymentError(str(error)) from error


def _print_report(report) -> None:
    for path in report.created:
        print(f"created  {path}")
    for path in report.kept:
        print(f"kept     {path} (exists; never overwritten)")


def _certs_make(args: argparse.Namespace, renew: bool = False) -> int:
    """Make, complete or renew the consortium folder."""
    from fedlego.certs import make_consortium

    out = Path(args.out)
    _print_report(make_consortium(out, args.site, args.server_name or (), renew=renew))
    sites = sorted(p.name for p in (out / "sites").iterdir()) if (out / "sites").exists() else []
    print(
        f"consortium in {out}: sites {', '.join(sites) or '(none)'}.\n"
        f"  coordinator machine: {out / 'superlink'} and {out / 'coordinator'} "
        f"(`fedlego superlink --certs {out}`, `fedlego run --certs {out}`)\n"
        f"  each hospital: its own {out / 'sites' / '<name>'} only (`fedlego site --keys <that folder>`)\n"
        f"  {out / 'ca' / 'ca.key'}: keep offline; needed only to add sites or renew the server certificate"
    )
    if renew:
        print(f"renewed: hand each hospital the new {out / 'superlink' / 'ca.pem'} (as its ca.pem)")
    return 0


def _certs_request(args: argparse.Namespace) -> int:
    """At a hospital: its own key pairs and the request with the public keys."""
    from fedlego.cert_requests import make_request

    path, report = make_request(Path(args.out), args.site[0])
    _print_report(report)
    print(
        f"send {path} (public keys only) to the consortium's CA; private keys stay in {args.out}.\n"
        f"  you get back ca.pem and coordinator.pub: put them in {args.out}, then `fedlego site --keys {args.out}`"
    )
    return 0


def _certs_sign(args: argparse.Namespace) -> int:
    """At the CA: add a hospital from its request."""
    from fedlego.cert_requests import RETURNED_FILES, sign_request

    folder, report = sign_request(Path(args.out), Path(args.request))
    _print_report(report)
    print(f"site {folder.name} registered; send back {', '.join(str(folder / n) for n in RETURNED_FILES)}")
    return 0


def _certs_status(args: argparse.Namespace) -> int:
    """Every certificate of a folder with its names and expiry; exit 1 if one is expired."""
    from fedlego.cert_status import WARN_DAYS, folder_status, site_registrations

    folder = Path(args.out or args.keys or ".")
    statuses = folder_status(folder)
    if not statuses:
        raise DeploymentError(f"{folder}: no certificate here (a consortium folder or a site's certs folder)")
    for status in statuses:
        print(status.line())
    for line in site_registrations(folder):
        print(line)
    soon = [s for s in statuses if s.days_left <= WARN_DAYS]
    if soon:
        print(f"renew within {WARN_DAYS} days of expiry: `fedlego certs renew --out CONSORTIUM`")
    return 1 if any(s.days_left < 0 for s in statuses) else 0


CERTS_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "make": _certs_make,
    "request": _certs_request,
    "sign": _certs_sign,
    "renew": lambda args: _certs_make(args, renew=True),
    "status": _certs_status,
}


def cmd_superlink(args: argparse.Namespace) -> int:
    """``fedlego superlink``: the coordinator's SuperLink in the foreground."""
    _require_security(args.certs, args.insecure, "DIR")
    certs = None
    if args.certs is not None:
        certs = check_expiry(_check_files(args.certs, SUPERLINK_FILES, "a consortium folder of `fedlego certs`"))
    return serve_superlink(args.host, args.port, args.home, certs)


def cmd_site(args: argparse.Namespace) -> int:
    """``fedlego site``: a hospital's SuperNode in the foreground."""
    check_address(args.superlink)
    if args.data is None:
        raise DeploymentError("--data FOLDER is required: the site folder (site.json, labels, modalities)")
    if args.keys is None and not args.insecure:
        raise DeploymentError(SITE_SECURITY_REQUIRED)
    site_certs = None if args.keys is None else check_site_certs(args.keys)
    if args.min_cell is not None and args.min_cell < 1:
        raise DeploymentError(f"--min-cell must be at least 1, got {args.min_cell}")
    if args.check:
        return _site_check(args, site_certs)
    validate_site_folder(args.data, args.schema)  # a bad folder fails before any warning or connection
    _require_security(args.keys, args.insecure, "KEY_DIR", option="--keys")
    return serve_site(
        args.superlink,
        args.data,
        args.port,
        args.home,
        site_certs,
        args.threads,
        args.audit_dir,
        args.schema,
        args.min_cell,
        args.warm_worker,
    )


def _print_findings(title: str, findings) -> int:
    print(title)
    for finding in findings:
        print(finding.line())
    failed = [f for f in findings if not f.ok]
    print(f"{len(findings) - len(failed)} of {len(findings)} checks passed" + ("" if failed else "; ready"))
    return 1 if failed else 0


def _site_check(args: argparse.Namespace, site_certs: Path | None) -> int:
    """``fedlego site --check``: the hospital's preflight, without joining a run."""
    from fedlego.preflight import site_preflight

    command = supernode_command(args.superlink, args.data, args.port or free_port(), site_certs=site_certs)
    findings = site_preflight(args.superlink, args.data, site_certs, args.schema, command)
    return _print_findings(f"fedlego site --check: {args.data} -> {args.superlink}", findings)


def cmd_run(args: argparse.Namespace) -> int:
    """``fedlego run``: submit the federation to a SuperLink and print its results."""
    from fedlego.console import federation_table, phase_times

    check_address(args.superlink)
    _require_security(args.certs, args.insecure, "DIR")
    overrides = set_overrides(args.set)
    certs = None
    if args.certs is not None:
        certs = check_expiry(_check_files(args.certs, ("superlink/ca.pem",), "a consortium folder of `fedlego certs`"))
        missing = [
            name
            for key, name in zip(("trusted-sites", "coordinator-key"), COORDINATOR_FILES, strict=True)
            if key not in overrides and not (certs / name).is_file()
        ]
        if missing:
            raise DeploymentError(
                f"{certs} lacks {', '.join(missing)}; the ServerApp reads them on the SuperLink's machine: "
                "run `fedlego run` there, or pass --set trusted-sites=PATH coordinator-key=PATH (paths there)"
            )
    _check_settings(overrides)
    if args.check:
        from fedlego.preflight import coordinator_preflight

        findings = coordinator_preflight(args.superlink, certs, overrides)
        return _print_findings(f"fedlego run --check: SuperLink {args.superlink}", findings)
    try:
        results = run_deployment(args.superlink, overrides, args.out, timeout=args.timeout, certs=certs)
    except RunInterrupted as interrupted:
        print(f"fedlego: {interrupted}", file=sys.stderr)
        return INTERRUPTED_EXIT
    print(federation_table(results))
    print(f"status {results.status}; wall time {results.wall_seconds or 0.0:.1f} s ({phase_times(results)})")
    signatures = results.signatures or Signatures()
    print(
        f"signatures: packages {'required' if signatures.required else 'NOT required'}, "
        f"models {'signed' if signatures.models_signed else 'NOT signed'}"
    )
    if results.error:
        print(f"error: {results.error}")
    print(f"results in {args.out / 'results.json'}, packages in {args.out / 'packages'}")
    if (args.out / REPORT_NAME).exists():
        print(f"report in {args.out / REPORT_NAME}")
    return 0 if results.status == "completed" else 1


def cmd_stop(args: argparse.Namespace) -> int:
    """``fedlego stop``: stop a run at the SuperLink and record it in its run folder."""
    from fedlego.common.signing import load_signing_key
    from fedlego.stop import stop_run

    _require_security(args.certs, args.insecure, "DIR")
    ca, key = None, None
    if args.certs is not None:
        certs = _check_files(args.certs, ("superlink/ca.pem",), "a consortium folder of `fedlego certs`")
        ca = certs / "superlink" / "ca.pem"
        if (certs / COORDINATOR_FILES[1]).is_file():  # on the coordinator's machine: sign what is recorded
            key = load_signing_key(certs / COORDINATOR_FILES[1])
    results = stop_run(args.superlink, args.out, ca, args.run_id, args.wait, signing_key=key)
    if results is not None:
        print(f"status {results.status}: {results.error or ''}".rstrip(": "))
        print(f"recorded in {Path(args.out) / 'results.json'} and {Path(args.out) / 'audit.jsonl'}")
    return 0
