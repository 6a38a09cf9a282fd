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
import json
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedlego.options import add_scenario_arguments, scenario_overrides, set_overrides
from fedlego.server.report import REPORT_NAME
from fedlego.simulation import (
    _is_progress,
    app_folder,
    free_port,
    quiet_environment,
    stop_process_group,
    tool,
    write_run_config,
)

CONNECTION = "fedlego"
SECURITY_REQUIRED = (
    "TLS is required: pass --certs {what} (made by `fedlego certs`), or --insecure explicitly "
    "(only on a trusted network: traffic is then unencrypted and sites are unauthenticated)"
)
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
NODE_REFUSED = 305
"""Exit code of ``flower-supernode`` when the SuperLink refuses to activate it (key not registered)."""
SITE_RETRIES = 6
SITE_RETRY_SECONDS = 10.0
SITE_FILES = ("ca.pem", "node-auth", "signing.key", "coordinator.pub")
SUPERLINK_FILES = ("superlink/ca.pem", "superlink/server.pem", "superlink/server.key")
COORDINATOR_FILES = ("coordinator/trusted-sites.json", "coordinator/signing.key")
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


INSECURE_HELP = "no TLS, no site authentication, no signatures (a loud warning; trusted networks only)"


class DeploymentError(RuntimeError):
    """A deployment command cannot start (missing --insecure, bad address, ...)."""


def _require_security(certs: Path | None, insecure: bool, what: str) -> None:
    """Exactly one of ``--certs`` and ``--insecure``; warn loudly on ``--insecure``."""
    if certs is not None and insecure:
        raise DeploymentError("pass either --certs or --insecure, not both")
    if certs is None and not insecure:
        raise DeploymentError(SECURITY_REQUIRED.format(what=what))
    if insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)


def _check_files(folder: Path, names: Sequence[str], what: str) -> Path:
    """``folder`` resolved, with every file of ``names`` present (clear error otherwise)."""
    folder = Path(folder).resolve()
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DeploymentError(f"{folder} is not {what}: missing {', '.join(missing)} (see `fedlego certs`)")
    return folder


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


def superlink_command(host: str, port: int, certs: Path | None = None) -> list[str]:
    """``flower-superlink`` in deployment mode (ServerApp in a subprocess, state in memory): with
    ``certs`` (a ``fedlego certs`` folder) TLS and SuperNode authentication, otherwise insecure."""
    if certs is None:
        security = ["--insecure"]
    else:
        certs = Path(certs).resolve()
        security = [
            "--ssl-ca-certfile",
            str(certs / "superlink" / "ca.pem"),
            "--ssl-certfile",
            str(certs / "superlink" / "server.pem"),
            "--ssl-keyfile",
            str(certs / "superlink" / "server.key"),
            "--enable-supernode-auth",
        ]
    return [
        tool("flower-superlink"),
        *security,
        "--isolation",
        "subprocess",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        ":flwr-in-memory:",
    ]


def _quoted(key: str, path: Path) -> str:
    text = str(Path(path).resolve())
    if "'" not in text:
        return f"{key}='{text}'"
    if '"' not in text and "\\" not in text:
        return f'{key}="{text}"'
    raise DeploymentError(f"cannot pass a path with both quote kinds to Flower: {text!r}")


def node_config(data_dir: Path, site_certs: Path | None = None) -> str:
    """The SuperNode's ``--node-config``: the site folder and, with a site's certs folder, the
    package signing key and the coordinator's public key (absolute paths)."""
    entries = [_quoted("data-dir", data_dir)]
    if site_certs is not None:
        entries.append(_quoted("signing-key", Path(site_certs) / "signing.key"))
        entries.append(_quoted("coordinator-public-key", Path(site_certs) / "coordinator.pub"))
    return " ".join(entries)


def supernode_command(
    superlink: str, data_dir: Path, port: int, host: str = "127.0.0.1", site_certs: Path | None = None
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
        _check_address(superlink),
        "--node-config",
        node_config(data_dir, site_certs),
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
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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
        "recreate the certs folder with `fedlego certs --server-name ...` naming this address"
    )


def wait_ready(address: str, process: subprocess.Popen, ca: Path | None = None, timeout: float = 60.0) -> None:
    """Wait for the SuperLink's /health endpoint (HTTPS, verified with ``ca``, when ``ca`` is given)."""
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    url = f"{'https' if ca is not None else 'http'}://{address}/health"
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeploymentError(f"flower-superlink exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except ssl.SSLCertVerificationError as error:
            raise DeploymentError(f"{url}: the SuperLink's certificate does not verify ({error})") from error
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
            time.sleep(0.3)
    raise DeploymentError(f"flower-superlink not ready at {url} after {timeout:.0f} s ({last})")


def _flwr_json(args: Sequence[str], flwr_home: Path) -> dict[str, Any]:
    """A ``flwr ... --format json`` command's answer (flwr exits 0 even on failure in this format)."""
    result = subprocess.run(
        [tool("flwr"), *args, "--format", "json"],
        env=quiet_environment(flwr_home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    text = result.stdout[result.stdout.find("{") :] if "{" in result.stdout else ""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"success": False, "error-message": (result.stdout + result.stderr).strip()[-2000:]}


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
        answer = _flwr_json(["supernode", "register", str(key), CONNECTION, "--name", key.stem], flwr_home)
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
    answer = _flwr_json(["supernode", "list", CONNECTION], flwr_home)
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
    """A site's certs folder (``fedlego certs``' ``sites/<name>``), resolved and complete."""
    return _check_files(site_certs, SITE_FILES, "a site certs folder (sites/<name> of `fedlego certs`)")


def serve_site(
    superlink: str, data_dir: Path, port: int | None, home: Path | None, site_certs: Path | None = None
) -> int:
    """``fedlego site``: validate the site folder, then run the hospital's SuperNode in the
    foreground. With ``site_certs`` a refused connection (e.g. a SuperLink that has not registered
    this site's key yet) is retried a few times before giving up."""
    data = validate_site_folder(data_dir)
    counts = {role: len(ids) for role, ids in data.roles.items()}
    mode = "TLS, node key and package signing" if site_certs is not None else "INSECURE"
    print(
        f"fedlego site: {data.name} ({', '.join(sorted(data.dataset.modalities))}; patients per role {counts}) "
        f"-> SuperLink {superlink} ({mode})",
        flush=True,
    )
    if site_certs is not None and Path(site_certs).resolve().name != data.name:
        print(
            f"fedlego site: note: the certs folder is {Path(site_certs).name!r} but the site is {data.name!r}: "
            f"its packages are signed as {data.name!r}, so the coordinator's trusted-sites.json must list "
            "this signing key under that name",
            flush=True,
        )
    command = supernode_command(superlink, data_dir, port or free_port(), site_certs=site_certs)
    with tempfile.TemporaryDirectory(prefix="fedlego-site-") as temporary:
        flwr_home = Path(home).resolve() if home is not None else Path(temporary)
        flwr_home.mkdir(parents=True, exist_ok=True)
        attempts = SITE_RETRIES if site_certs is not None else 1
        for attempt in range(1, attempts + 1):
            code = _foreground(command, quiet_environment(flwr_home))
            if code != NODE_REFUSED:
                return code
            reason = (
                f"fedlego site: the SuperLink refused or could not be reached (flower-supernode exit code {code}); "
                "is this site's node-auth.pub registered at the SuperLink?"
            )
            if attempt == attempts:
                print(f"{reason} Giving up after {attempts} attempts.", file=sys.stderr, flush=True)
                return code
            print(
                f"{reason} Retrying in {SITE_RETRY_SECONDS:.0f} s ({attempt}/{attempts}).", file=sys.stderr, flush=True
            )
            time.sleep(SITE_RETRY_SECONDS)
        return NODE_REFUSED


# --------------------------------------------------------------------------- background (tests, demos)


def start_background(command: Sequence[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    """Start a process in its own session (stop it with ``stop_process_group``), output to a log."""
    with Path(log_path).open("w") as log:
        return subprocess.Popen(
            list(command), env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextmanager
def local_superlink(
    home: Path, port: int | None = None, certs: Path | None = None
) -> Iterator[tuple[int, subprocess.Popen]]:
    """A deployment-mode SuperLink on loopback, ready when yielded (port, process); stopped after.
    With ``certs`` it runs with TLS and node authentication and the node keys are registered."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    with (home / "superlink.log").open("w") as log:
        process = subprocess.Popen(
            superlink_command("127.0.0.1", port, certs),
            env=quiet_environment(home),
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        address = local_address("127.0.0.1", port, certs)
        wait_ready(address, process, None if certs is None else Path(certs).resolve() / "superlink" / "ca.pem")
        if certs is not None:
            register_node_keys(Path(certs), address, home / "control", lambda line: None)
        yield port, process
    finally:
        stop_process_group(process)


# --------------------------------------------------------------------------- the run


def write_connection(flwr_home: Path, superlink: str, root_certificates: Path | None = None) -> None:
    """An isolated ``FLWR_HOME/config.toml`` with one connection named ``fedlego``: TLS verified
    with ``root_certificates`` (the consortium CA), or insecure without it."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    if root_certificates is None:
        security = "insecure = true\n"
    else:
        security = f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}\n"
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{_check_address(superlink)}"\n{security}'
    )


def run_deployment(
    superlink: str,
    overrides: Mapping[str, Any],
    out_dir: Path,
    timeout: float | None = None,
    echo: Callable[[str], None] = lambda line: print(line, flush=True),
    certs: Path | None = None,
) -> dict[str, Any]:
    """Submit the fedlego app to ``superlink`` with ``flwr run --stream``; returns results.json.

    With ``certs`` (the ``fedlego certs`` folder) the connection verifies the SuperLink with the
    consortium CA and the run config gets ``trusted-sites`` and ``coordinator-key`` from
    ``certs/coordinator`` (unless given in ``overrides``): unsigned packages are then refused and
    merged/fused models signed. These paths, like ``out_dir``, are read and written by the
    ServerApp on the SuperLink's machine: results are read back here only when this machine is
    that one (or shares the folder).
    """
    out_dir = Path(out_dir).resolve()
    work = out_dir / ".flower"
    if work.exists():
        shutil.rmtree(work)
    flwr_home = work / "home"
    overrides = dict(overrides)
    if certs is not None:
        certs = Path(certs).resolve()
        write_connection(flwr_home, superlink, certs / "superlink" / "ca.pem")
        overrides.setdefault("trusted-sites", str(certs / "coordinator" / "trusted-sites.json"))
        overrides.setdefault("coordinator-key", str(certs / "coordinator" / "signing.key"))
    else:
        write_connection(flwr_home, superlink)
    app = app_folder(work / "app")
    run_config = write_run_config({**overrides, "out-dir": str(out_dir)}, work / "run-config.toml")
    results_path = out_dir / "results.json"
    results_path.unlink(missing_ok=True)
    (out_dir / REPORT_NAME).unlink(missing_ok=True)  # the ServerApp writes this run's next to results.json
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


def _check_settings(overrides: Mapping[str, Any]) -> None:
    from fedlego.common.federation import FederationSettings

    settings = FederationSettings.from_run_config(overrides)
    if settings.extra:
        raise ValueError(f"unknown run-config keys {sorted(settings.extra)} (see fedlego/flwr_app/pyproject.toml)")


def _export_sites(args: argparse.Namespace) -> int:
    overrides = scenario_overrides(args)
    written = export_sites(overrides, args.out)
    for name, folder, modalities in written:
        print(f"{name:<14} {'+'.join(modalities):<30} {folder}")
    print(
        f"{len(written)} site folders in {args.out}; start one `fedlego site --data-dir <folder>` per site and "
        f"`fedlego run ... --set dataset={args.scenario} min-sites={len(written)}`"
    )
    return 0


def _certs(args: argparse.Namespace) -> int:
    from fedlego.certs import make_consortium

    out = Path(args.out)
    report = make_consortium(out, args.site, args.server_name or ("127.0.0.1", "localhost"))
    for path in report.created:
        print(f"created  {path}")
    for path in report.kept:
        print(f"kept     {path} (exists; never overwritten)")
    sites = sorted(p.name for p in (out / "sites").iterdir()) if (out / "sites").exists() else []
    print(
        f"consortium in {out}: sites {', '.join(sites) or '(none)'}.\n"
        f"  coordinator machine: {out / 'superlink'} and {out / 'coordinator'} "
        f"(`fedlego superlink --certs {out}`, `fedlego run --certs {out}`)\n"
        f"  each hospital: its own {out / 'sites' / '<name>'} only (`fedlego site --certs <that folder>`)\n"
        f"  {out / 'ca' / 'ca.key'}: keep offline; needed only to add sites or renew the server certificate"
    )
    return 0


def _superlink(args: argparse.Namespace) -> int:
    _require_security(args.certs, args.insecure, "DIR")
    certs = None
    if args.certs is not None:
        certs = _check_files(args.certs, SUPERLINK_FILES, "a consortium folder of `fedlego certs`")
    return serve_superlink(args.host, args.port, args.home, certs)


def _site(args: argparse.Namespace) -> int:
    _check_address(args.superlink)
    if args.certs is None and not args.insecure:
        raise DeploymentError(SECURITY_REQUIRED.format(what="SITE_DIR"))
    site_certs = None if args.certs is None else check_site_certs(args.certs)
    validate_site_folder(args.data_dir)  # a bad folder fails before any warning or connection
    _require_security(args.certs, args.insecure, "SITE_DIR")
    return serve_site(args.superlink, args.data_dir, args.port, args.home, site_certs)


def _run(args: argparse.Namespace) -> int:
    from fedlego.server.checks import format_federation_table

    _check_address(args.superlink)
    _require_security(args.certs, args.insecure, "DIR")
    overrides = set_overrides(args.set)
    certs = None
    if args.certs is not None:
        certs = _check_files(args.certs, ("superlink/ca.pem",), "a consortium folder of `fedlego certs`")
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
    results = run_deployment(args.superlink, overrides, args.out, timeout=args.timeout, certs=certs)
    print(format_federation_table(results))
    phases = ", ".join(f"{name} {v['seconds']:.1f} s" for name, v in results.get("phases", {}).items())
    print(f"status {results.get('status')}; wall time {results.get('wall_seconds', 0.0):.1f} s ({phases})")
    signatures = results.get("signatures", {})
    print(
        f"signatures: packages {'required' if signatures.get('required') else 'NOT required'}, "
        f"models {'signed' if signatures.get('models_signed') else 'NOT signed'}"
    )
    if results.get("error"):
        print(f"error: {results['error']}")
    print(f"results in {args.out / 'results.json'}, packages in {args.out / 'packages'}")
    if (args.out / REPORT_NAME).exists():
        print(f"report in {args.out / REPORT_NAME}")
    return 0 if results.get("status") == "completed" else 1


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register certs, export-sites, superlink, site and run on the ``fedlego`` parser."""
    p = subparsers.add_parser(
        "certs",
        help="make (or complete) a consortium's keys and certificates",
        description="Creates under OUT a CA, the SuperLink's TLS certificate, the coordinator's signing key and "
        "trusted-sites.json, and per site a node-auth key pair, a signing key pair and the public files it needs. "
        "Re-running adds what is missing (e.g. a new --site) and never overwrites a key.",
    )
    p.add_argument("--out", type=Path, required=True, help="the consortium folder")
    p.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="NAME",
        help="a site name as in its site.json (repeatable)",
    )
    p.add_argument(
        "--server-name",
        action="append",
        metavar="NAME",
        help="a host name or IP the SuperLink is reached at (repeatable; default 127.0.0.1 and localhost; "
        "include 127.0.0.1 or localhost so `fedlego superlink` can register node keys locally)",
    )
    p.set_defaults(handler=_certs)

    p = subparsers.add_parser(
        "export-sites",
        help="write one site folder per scenario site (hospital-like data folders for tests and demos)",
        description="Cut a bundled or synthetic cohort into sites as `fedlego simulate` does and write each "
        "as a site folder OUT/<site>/ (site.json, labels, one file per modality, split.csv of the global fold).",
    )
    add_scenario_arguments(p)
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
    p.add_argument(
        "--certs",
        type=Path,
        metavar="DIR",
        help="the consortium folder of `fedlego certs`: TLS, SuperNode authentication, registers "
        "DIR/coordinator/node-auth/*.pub",
    )
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
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
    p.add_argument(
        "--certs",
        type=Path,
        metavar="SITE_DIR",
        help="this site's folder sites/<name> of `fedlego certs`: TLS, node key, package signing, "
        "models checked against the coordinator's key",
    )
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    p.set_defaults(handler=_site)

    p = subparsers.add_parser(
        "run",
        help="coordinator: run the federation on a SuperLink and print the results",
        description="Submits the fedlego Flower app to the SuperLink (flwr run --stream) with the run config "
        "overrides; the ServerApp writes OUT/results.json and OUT/packages/ on the SuperLink's machine.",
    )
    p.add_argument("--superlink", required=True, metavar="HOST:PORT")
    p.add_argument(
        "--certs",
        type=Path,
        metavar="DIR",
        help="the consortium folder of `fedlego certs`: verifies the SuperLink with DIR/superlink/ca.pem and "
        "sets trusted-sites and coordinator-key from DIR/coordinator (paths read on the SuperLink's machine)",
    )
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
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
