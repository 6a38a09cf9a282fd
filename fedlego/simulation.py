"""``fedlego simulate``: the federation on Flower's simulation engine, on this machine.

Starts a private SuperLink on a free loopback port with an isolated ``FLWR_HOME``, runs the
fedlego Flower app with ``flwr run --stream`` (one simulated SuperNode per scenario site), and
stops every process it started, whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from contextlib import contextmanager, suppress
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from fedlego.server.report import REPORT_NAME

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONWARNINGS": "ignore::FutureWarning",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def app_folder(destination: Path) -> Path:
    """A copy of the fedlego Flower app project (a pyproject.toml, no code) in ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    with as_file(files("fedlego") / "flwr_app" / "pyproject.toml") as source:
        shutil.copyfile(source, destination / "pyproject.toml")
    return destination


def toml_value(value: Any) -> str:
    """A scalar as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_run_config(overrides: Mapping[str, Any], path: Path) -> Path:
    """Run-config overrides as a TOML file for ``flwr run --run-config``."""
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in overrides.items()))
    return path


def _wait_healthy(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise RuntimeError(f"flower-superlink not ready on 127.0.0.1:{port} after {timeout:.0f} s")


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


@contextmanager
def simulation_superlink(flwr_home: Path, log_path: Path):
    """A private SuperLink in simulation mode on a free loopback port; yields the port."""
    port = free_port()
    env = quiet_environment(flwr_home)
    command = [
        tool("flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        ":flwr-in-memory:",
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(port, process)
        yield port
    finally:
        stop_process_group(process)
        stop_leftovers(flwr_home)


def run_simulation(
    overrides: Mapping[str, Any],
    n_sites: int,
    out_dir: Path,
    gpu_fraction: float = 0.0,
    timeout: float | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the federation with ``n_sites`` simulated sites; returns the results document."""
    out_dir = out_dir.resolve()
    if not resume and (out_dir / "checkpoint").exists():
        shutil.rmtree(out_dir / "checkpoint")  # a new run; the audit log keeps the old one's entries
    work = out_dir / ".flower"
    if work.exists():
        shutil.rmtree(work)
    flwr_home = work / "home"
    flwr_home.mkdir(parents=True)
    app = app_folder(work / "app")
    run_config = write_run_config({**overrides, "out-dir": str(out_dir)}, work / "run-config.toml")
    resources = f"num-supernodes={n_sites} client-resources-num-cpus=1"
    if gpu_fraction > 0:
        resources += f" client-resources-num-gpus={gpu_fraction}"
    results_path = out_dir / "results.json"
    if results_path.exists():
        results_path.unlink()
    (out_dir / REPORT_NAME).unlink(missing_ok=True)  # the ServerApp writes this run's next to results.json
    env = quiet_environment(flwr_home)
    with simulation_superlink(flwr_home, work / "superlink.log") as port:
        (flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "fedlego"\n\n[superlink.fedlego]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        command = [
            tool("flwr"),
            "run",
            str(app),
            "fedlego",
            "--stream",
            "--run-config",
            str(run_config),
            "--federation-config",
            resources,
        ]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if _is_progress(line):
                    print(line.rstrip(), flush=True)
            process.wait(timeout=timeout)
        finally:
            stop_process_group(process)
    if not results_path.exists():
        raise RuntimeError(f"the federation wrote no results (see {work / 'superlink.log'})")
    return json.loads(results_path.read_text())


def _is_progress(line: str) -> bool:
    """Our own progress lines, without Flower's and Ray's start-up chatter."""
    text = line.strip()
    return bool(text) and not any(
        marker in text
        for marker in ("DEBUG", "INFO", "WARNING", "warnings.warn", "Tip:", "Successfully", "Using SuperLink")
    )
