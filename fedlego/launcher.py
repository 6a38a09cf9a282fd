"""The Flower processes of every way fedlego runs a federation, started and stopped in one place.

``fedlego simulate`` (``fedlego.simulation``) and the deployment commands (``fedlego.deploy``)
share what is here: the ``flower-superlink`` command line (simulation or deployment mode, TLS or
insecure), its readiness check, the isolated ``FLWR_HOME`` with its connection config, the run's
folder (app copy, run-config file), ``flwr run --stream`` with our own progress lines, and
stopping every process a run started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from fedlego.common.config import toml_value
from fedlego.server.report import REPORT_NAME
from fedlego.server.results import RunResults

CONNECTION = "fedlego"
"""Name of the one SuperLink connection in a run's isolated ``FLWR_HOME/config.toml``."""
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONWARNINGS": "ignore::FutureWarning",
}
"""Environment of every Flower process we start: no telemetry, update checks or installs."""
PROGRESS_NOISE = ("DEBUG", "INFO", "WARNING", "warnings.warn", "Tip:", "Successfully", "Using SuperLink")
"""Markers of Flower's and Ray's own lines in ``flwr run --stream`` output (not ours)."""
RUN_STARTED = "Successfully started run "
"""How ``flwr run`` announces the run id (the last word of that line)."""


class LaunchError(RuntimeError):
    """A Flower process did not start, did not become ready, or was given a bad address."""


# --------------------------------------------------------------------------- environment


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_interrupt() -> None:
    """``preexec_fn`` for a child that must stop on SIGINT as on a terminal's Ctrl-C: a shell
    without job control starts background commands with SIGINT ignored, every child inherits
    that, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def quiet_environment(flwr_home: Path) -> dict[str, str]:
    """This process's environment with telemetry and update checks off, an isolated FLWR_HOME,
    and this Python environment's scripts first on PATH (Flower starts its helpers by name)."""
    scripts = str(Path(sys.executable).parent)
    return {
        **os.environ,
        **QUIET_ENV,
        "FLWR_HOME": str(flwr_home),
        "PATH": scripts + os.pathsep + os.environ.get("PATH", ""),
    }


def tool(name: str) -> str:
    """A console script of this Python environment (falls back to PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def check_address(address: str) -> str:
    """``address`` when it reads HOST:PORT (LaunchError otherwise)."""
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise LaunchError(f"expected HOST:PORT for the SuperLink address, got {address!r}")
    return address


# --------------------------------------------------------------------------- files of a run


def app_folder(destination: Path) -> Path:
    """A copy of the fedlego Flower app project (a pyproject.toml, no code) in ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    with as_file(files("fedlego") / "flwr_app" / "pyproject.toml") as source:
        shutil.copyfile(source, destination / "pyproject.toml")
    return destination


def write_run_config(overrides: Mapping[str, Any], path: Path) -> Path:
    """Run-config overrides as a TOML file for ``flwr run --run-config``."""
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in overrides.items()))
    return path


def connection_config(address: str, root_certificates: Path | None = None) -> str:
    """``config.toml`` text with one SuperLink connection named ``fedlego`` (the default): TLS
    verified with ``root_certificates`` (the consortium CA, made absolute), or insecure without it."""
    if root_certificates is None:
        security = "insecure = true\n"
    else:
        security = f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}\n"
    return (
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{check_address(address)}"\n{security}'
    )


def write_connection(flwr_home: Path, superlink: str, root_certificates: Path | None = None) -> Path:
    """An isolated ``FLWR_HOME/config.toml`` holding :func:`connection_config`; returns its path."""
    text = connection_config(superlink, root_certificates)
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(text)
    return path


def flwr_json(args: Sequence[str], flwr_home: Path) -> dict[str, Any]:
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


@dataclass(frozen=True)
class RunFolder:
    """The files of one ``flwr run``: ``out_dir`` (results, report, packages, written by the
    ServerApp) and ``out_dir/.flower`` (our FLWR_HOME, app copy, run config and logs)."""

    out_dir: Path
    work: Path
    flwr_home: Path
    app: Path
    run_config: Path

    @property
    def results(self) -> Path:
        """Where the ServerApp writes the results document."""
        return self.out_dir / "results.json"

    def read_results(self) -> RunResults | None:
        """The run's results, or None when the run wrote none."""
        return RunResults.read(self.results) if self.results.exists() else None


def prepare_run(out_dir: Path, overrides: Mapping[str, Any]) -> RunFolder:
    """A fresh ``out_dir/.flower`` (empty FLWR_HOME, the app, the run config with ``out-dir``
    set to ``out_dir``), and no results or report of an earlier run left in ``out_dir``."""
    out_dir = Path(out_dir).resolve()
    work = out_dir / ".flower"
    if work.exists():
        shutil.rmtree(work)
    flwr_home = work / "home"
    flwr_home.mkdir(parents=True)
    app = app_folder(work / "app")
    run_config = write_run_config({**overrides, "out-dir": str(out_dir)}, work / "run-config.toml")
    folder = RunFolder(out_dir, work, flwr_home, app, run_config)
    folder.results.unlink(missing_ok=True)
    (out_dir / REPORT_NAME).unlink(missing_ok=True)  # the ServerApp writes this run's next to results.json
    return folder


# --------------------------------------------------------------------------- processes


def start_background(
    command: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen:
    """Start a process in its own session (stop it with ``stop_process_group``), output to a log."""
    with Path(log_path).open("w") as log:
        return subprocess.Popen(
            list(command), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop one process we started: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_process_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process we started in its own session, with everything it spawned."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)
    except ProcessLookupError:
        pass


def processes_with_home(flwr_home: Path) -> list[int]:
    """PIDs of processes whose environment carries this run's private FLWR_HOME: the processes
    this run started, directly or through Flower and Ray (Linux /proc; empty elsewhere)."""
    needle = f"FLWR_HOME={flwr_home}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        if int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def stop_leftovers(flwr_home: Path, grace: float = 15.0) -> None:
    """Give the run's helper processes (SuperExec, app processes, Ray) time to exit after the
    SuperLink stopped, then terminate those still alive, by PID."""
    deadline = time.monotonic() + grace
    while processes_with_home(flwr_home) and time.monotonic() < deadline:
        time.sleep(0.5)
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_with_home(flwr_home):
            with suppress(ProcessLookupError):
                os.kill(pid, signal_number)
        time.sleep(1.0)


# --------------------------------------------------------------------------- the SuperLink


def superlink_command(host: str, port: int, certs: Path | None = None, simulation: bool = False) -> list[str]:
    """``flower-superlink`` (ServerApp in a subprocess, state in memory) on ``host:port``: in
    simulation mode (Flower's simulation engine runs the ClientApps) or deployment mode (SuperNodes
    connect); with ``certs`` (a ``fedlego certs`` folder) TLS and SuperNode authentication,
    otherwise insecure."""
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
        *(["--simulation"] if simulation else []),
        "--isolation",
        "subprocess",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        ":flwr-in-memory:",
    ]


def health_url(address: str, tls: bool = False) -> str:
    """The SuperLink's health endpoint at ``address`` (HTTPS with TLS)."""
    return f"{'https' if tls else 'http'}://{address}/health"


def wait_ready(address: str, process: subprocess.Popen, ca: Path | None = None, timeout: float = 60.0) -> None:
    """Wait for the SuperLink's /health endpoint at ``address`` (HTTPS, verified with ``ca``, when
    ``ca`` is given); LaunchError when the process exits first, the certificate does not verify,
    or ``timeout`` seconds pass."""
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    url = health_url(address, tls=ca is not None)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"flower-superlink exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except ssl.SSLCertVerificationError as error:
            raise LaunchError(f"{url}: the SuperLink's certificate does not verify ({error})") from error
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
            time.sleep(0.3)
    raise LaunchError(f"flower-superlink not ready at {url} after {timeout:.0f} s ({last})")


@contextmanager
def background_superlink(
    flwr_home: Path,
    log_path: Path,
    port: int,
    *,
    certs: Path | None = None,
    simulation: bool = False,
    address: str | None = None,
    cwd: Path | None = None,
    stop_helpers: bool = False,
) -> Iterator[subprocess.Popen]:
    """A SuperLink on 127.0.0.1:``port`` in its own session (output to ``log_path``), ready when
    yielded; stopped after, with (``stop_helpers``) every process left with this FLWR_HOME.

    ``address`` is where the readiness check dials (default 127.0.0.1:port; with ``certs`` a
    name the server certificate holds); with ``certs`` it is checked over HTTPS with the CA."""
    certs = None if certs is None else Path(certs).resolve()
    process = start_background(
        superlink_command("127.0.0.1", port, certs, simulation=simulation),
        quiet_environment(flwr_home),
        log_path,
        cwd=cwd,
    )
    try:
        wait_ready(address or f"127.0.0.1:{port}", process, None if certs is None else certs / "superlink" / "ca.pem")
        yield process
    finally:
        stop_process_group(process)
        if stop_helpers:
            stop_leftovers(flwr_home)


# --------------------------------------------------------------------------- flwr run


def is_progress_line(line: str) -> bool:
    """Whether a ``flwr run --stream`` line is one of our own progress lines (not blank, not
    Flower's or Ray's start-up chatter)."""
    text = line.strip()
    return bool(text) and not any(marker in text for marker in PROGRESS_NOISE)


def run_command(
    app: Path, run_config: Path, connection: str = CONNECTION, federation_config: str | None = None
) -> list[str]:
    """``flwr run <app> <connection> --stream --run-config <file> [--federation-config <items>]``."""
    command = [tool("flwr"), "run", str(app), connection, "--stream", "--run-config", str(run_config)]
    if federation_config is not None:
        command += ["--federation-config", federation_config]
    return command


@dataclass(frozen=True)
class RunOutcome:
    """How ``flwr run --stream`` ended."""

    returncode: int | None
    run_id: str
    """The id ``flwr run`` announced (empty when it announced none)."""
    timed_out: bool
    """The run took ``timeout`` seconds or more and was stopped (on the SuperLink too)."""
    interrupted: bool = False
    """Ctrl-C stopped the streaming here; the run itself goes on at the SuperLink."""


def _print_line(line: str) -> None:
    print(line, flush=True)


def stream_run(
    app: Path,
    run_config: Path,
    flwr_home: Path,
    *,
    connection: str = CONNECTION,
    federation_config: str | None = None,
    echo: Callable[[str], None] = _print_line,
    log_path: Path | None = None,
    timeout: float | None = None,
) -> RunOutcome:
    """Run :func:`run_command` through the connection in ``flwr_home``, ``echo`` our progress
    lines (:func:`is_progress_line`) and, with ``log_path``, log every line; wait for it to end.

    With ``timeout`` the ``flwr run`` process is stopped after that many seconds and, when it had
    announced a run id, the run is stopped on the SuperLink too (``flwr stop``), where the
    ServerApp would otherwise keep running. Ctrl-C stops only the streaming (``interrupted``): the
    run goes on at the SuperLink. The process is stopped whatever happens."""
    env = quiet_environment(flwr_home)
    start = time.monotonic()
    process = subprocess.Popen(
        run_command(app, run_config, connection, federation_config),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    run_id, interrupted = "", False
    watchdog = threading.Timer(timeout, stop_process_group, [process]) if timeout else None
    try:
        if watchdog is not None:
            watchdog.start()
        assert process.stdout is not None
        with open(log_path, "w") if log_path is not None else nullcontext() as log:
            try:
                for line in process.stdout:
                    if log is not None:
                        log.write(line)
                        log.flush()
                    if line.startswith(RUN_STARTED):
                        run_id = line.split()[-1]
                    if is_progress_line(line):
                        echo(line.rstrip())
            except KeyboardInterrupt:
                interrupted = True
        if not interrupted:
            with suppress(subprocess.TimeoutExpired):  # its output ended: it is exiting (or stopped below)
                process.wait(timeout=30)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        stop_process_group(process)
    timed_out = bool(timeout and time.monotonic() - start >= timeout)
    if timed_out and run_id:
        subprocess.run(
            [tool("flwr"), "stop", run_id, connection], env=env, capture_output=True, timeout=60, check=False
        )
    return RunOutcome(process.returncode, run_id, timed_out, interrupted)
