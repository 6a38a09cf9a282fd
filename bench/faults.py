"""Faults injected into a real loopback deployment: a secure SuperLink (TLS, SuperNode
authentication, signed packages) and one ``fedlego site`` process per exported PBC site
folder, driven through the ``fedlego`` command line as a consortium would.

Scenarios (each on a fresh deployment; every process started here is stopped after, by group):
- ``site killed mid-fuse``: SIGKILL one of two paired sites once the fuse phase starts;
- ``SuperLink killed mid-block``: SIGKILL the SuperLink (and with it the ServerApp) once a first
  block upload is checkpointed, start a new SuperLink on the same port, run ``fedlego run`` again
  into the same folder: it resumes, asking only the sites that had not uploaded;
- ``SuperLink killed mid-fuse``: the same once a fuse round is checkpointed;
- ``coordinator Ctrl-C``: SIGINT to ``fedlego run`` during the block phase, then ``fedlego stop``.

For each: whether the run ended as expected, whether any finished work was redone (uploads
received twice, phases repeated) and whether the audit log still verifies, with the sites'
signed heads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from fedlego.common.audit_head import copy_path
from fedlego.launcher import default_interrupt, free_port, processes_with_home, quiet_environment, stop_process_group

FEDLEGO = [sys.executable, "-m", "fedlego.cli"]
SITES = ["baseline", "labs", "paired-0", "paired-1"]
"""The sites of ``fedlego export-sites --dataset pbc --paired-sites 2``: each holds at least min-cell
(10) training patients of its modalities, so every site takes part in every phase it can."""
SETTINGS = [
    "dataset=pbc",
    "block-epochs=20",
    "patience=20",
    "block-rounds=0",
    "fuse-rounds=4",
    f"min-sites={len(SITES)}",
    "min-responses=1",
    "wait-timeout=180",
    "phase-timeout=120",
]


@dataclass
class FaultOutcome:
    """What a scenario did and what came of it."""

    scenario: str
    expected: str
    status: str | None
    ok: bool
    redone: str
    audit: str
    seconds: float
    notes: list[str] = field(default_factory=list)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def _fedlego(args: list[str], home: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FEDLEGO, *args], env=quiet_environment(home), capture_output=True, text=True, timeout=timeout, check=False
    )


class Deployment:
    """A consortium folder, site folders, and the processes of one scenario."""

    def __init__(self, root: Path, settings: list[str] = SETTINGS, site_options: tuple[str, ...] = ()) -> None:
        self.root = root
        self.settings, self.site_options = settings, site_options
        self.certs, self.sites, self.logs = root / "certs", root / "sites", root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        self.homes: list[Path] = []

    def prepare(self) -> None:
        """``fedlego certs`` and ``fedlego export-sites`` (two paired sites)."""
        made = _fedlego(["certs", "--out", str(self.certs), *[a for s in SITES for a in ("--site", s)]], self.root)
        exported = _fedlego(
            ["export-sites", "--dataset", "pbc", "--paired-sites", "2", "--out", str(self.sites)],
            self.root,
        )  # fmt: skip
        for result in (made, exported):
            if result.returncode != 0:
                raise RuntimeError(result.stderr[-2000:])

    def _start(self, name: str, args: list[str], home: Path) -> subprocess.Popen:
        home.mkdir(parents=True, exist_ok=True)
        self.homes.append(home)
        with (self.logs / f"{name}.log").open("a") as log:
            process = subprocess.Popen(
                [*FEDLEGO, *args],
                env=quiet_environment(home),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=default_interrupt,  # its Ctrl-C fault works in a background benchmark too
            )
        self.processes[name] = process
        return process

    def start_superlink(self, attempt: int = 0) -> None:
        """A SuperLink on this deployment's port, ready once it has registered the node keys."""
        log = self.logs / "superlink.log"
        before = _text(log).count("fedlego superlink: ready;")
        home = self.root / f"superlink-{attempt}"
        args = ["superlink", "--port", str(self.port), "--home", str(home), "--certs", str(self.certs)]
        process = self._start("superlink", args, home)
        _wait_for(
            lambda: _text(log).count("fedlego superlink: ready;") > before or process.poll() is not None,
            120,
            "the SuperLink",
        )
        if process.poll() is not None:
            raise RuntimeError(f"the SuperLink exited: {_text(log)[-2000:]}")

    def start_sites(self) -> None:
        for name in SITES:
            home = self.root / "homes" / name
            self._start(
                f"site-{name}",
                ["site", "--superlink", f"127.0.0.1:{self.port}", "--data", str(self.sites / name),
                 "--keys", str(self.certs / "sites" / name), "--home", str(home), "--threads", "1",
                 "--audit-dir", str(self.root / "heads" / name), *self.site_options],
                home,
            )  # fmt: skip

    def wait_for_sites(self, timeout: float = 180) -> None:
        """Until every site's SuperNode has connected (as a consortium's sites are before a run)."""
        logs = [self.logs / f"site-{name}.log" for name in SITES]
        _wait_for(lambda: all("SuperNode ID" in _text(log) for log in logs), timeout, "every site to connect")

    def start_run(self, out: Path, attempt: int = 0) -> subprocess.Popen:
        args = ["run", "--superlink", f"127.0.0.1:{self.port}", "--certs", str(self.certs), "--out", str(out)]
        return self._start(
            f"run-{attempt}", [*args, "--set", *self.settings, "--timeout", "900"], self.root / "run-home"
        )

    def kill(self, name: str) -> None:
        """SIGKILL a process group (no clean-up, as a crash or the OOM killer)."""
        with suppress(ProcessLookupError):
            os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait(timeout=30)

    def stop(self) -> None:
        """Every process started here, and their helpers (found by their FLWR_HOME)."""
        for process in reversed(list(self.processes.values())):
            stop_process_group(process)
        deadline = time.monotonic() + 20
        while any(processes_with_home(h) for h in self.homes) and time.monotonic() < deadline:
            time.sleep(0.5)
        for home in self.homes:
            for pid in processes_with_home(home):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def verify_audit(self, out: Path, run_id: str) -> str:
        """``fedlego audit verify`` with the results and every site's copy of the heads."""
        copies = [copy_path(self.root / "heads" / s, run_id) for s in SITES]
        args = ["audit", "verify", str(out / "audit.jsonl"), "--results", str(out / "results.json"),
                "--coordinator-key", str(self.certs / "sites" / SITES[0] / "coordinator.pub"),
                *[a for c in copies if c.exists() for a in ("--site-copy", str(c))]]  # fmt: skip
        result = _fedlego(args, self.root)
        return "verified" if result.returncode == 0 else f"FAILED: {(result.stdout + result.stderr).strip()[-300:]}"


@contextmanager
def deployment(root: Path, settings: list[str] = SETTINGS, site_options: tuple[str, ...] = ()) -> Iterator[Deployment]:
    """A prepared, started deployment (SuperLink and sites); everything stopped after."""
    deployed = Deployment(root, settings, site_options)
    deployed.prepare()
    try:
        deployed.start_superlink()
        deployed.start_sites()
        yield deployed
    finally:
        deployed.stop()


def _events(out: Path) -> list[dict]:
    path = out / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _redone(events: list[dict]) -> str:
    """Work done twice: uploads received twice, phases finished twice."""
    uploads = [(e["site"], e["modality"]) for e in events if e["event"] == "package-received"]
    rounds = [e["round"] for e in events if e["event"] == "fuse-round"]
    twice = len(uploads) - len(set(uploads))
    repeated = len(rounds) - len(set(rounds))
    return "nothing" if not twice and not repeated else f"{twice} uploads and {repeated} fuse rounds twice"


def _results(out: Path) -> dict:
    path = out / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _failures(results: dict) -> list[str]:
    """Each failure on record, as a note."""
    return [f"{f['site']} in {f['phase']}: {f['reason'].splitlines()[0]}" for f in results.get("failures", [])]


def _error(results: dict) -> list[str]:
    """The run's error, as a note (none when it had none)."""
    return [f"run error: {results['error'].splitlines()[0]}"] if results.get("error") else []


def _checkpointed(out: Path, key: str) -> bool:
    state = out / "checkpoint" / "state.json"
    try:
        progress = json.loads(state.read_text()).get("progress", {})
    except (OSError, json.JSONDecodeError):
        return False
    return bool(progress.get(key, {}).get("answered" if key == "block" else "history"))


def site_killed_mid_fuse(root: Path) -> FaultOutcome:
    start = time.monotonic()
    out = root / "out"
    with deployment(root) as deployed:
        run = deployed.start_run(out)
        _wait_for(lambda: "phase fuse:" in _text(out / ".flower" / "run.log") or run.poll() is not None, 600, "fuse")
        deployed.kill("site-paired-1")
        run.wait(timeout=900)
        results = _results(out)
        audit = deployed.verify_audit(out, results.get("run_id", ""))
    failed = {f["site"] for f in results.get("failures", [])}
    in_fuse = {f["site"] for f in results.get("failures", []) if f["phase"] == "fuse"}
    gaps = results.get("gaps") or []
    named = any("paired-1" in gap or "fuse rounds cut short" in gap for gap in gaps)
    ok = results.get("status") == "incomplete" and in_fuse == {"paired-1"} and named
    return FaultOutcome(
        "site killed mid-fuse (SIGKILL)", "finishes without the site, recorded incomplete", results.get("status"), ok,
        _redone(_events(out)), audit, time.monotonic() - start,
        [f"sites that failed: {sorted(failed)}", *_failures(results), *_error(results)],
    )  # fmt: skip


def _superlink_killed(root: Path, phase: str) -> FaultOutcome:
    start = time.monotonic()
    out = root / "out"
    key = "block" if phase == "block" else "fuse"
    notes = []
    with deployment(root) as deployed:
        run = deployed.start_run(out)
        _wait_for(lambda: _checkpointed(out, key) or run.poll() is not None, 600, f"a checkpointed {phase} step")
        deployed.kill("superlink")  # its SuperExec and ServerApp go with it
        run.wait(timeout=120)
        notes.append(f"fedlego run exited {run.returncode} after the SuperLink died")
        deployed.start_superlink(attempt=1)
        rerun = deployed.start_run(out, attempt=1)
        rerun.wait(timeout=900)
        said = _text(out / ".flower" / "run.log")
        kept = [line.strip() for line in said.splitlines() if "kept from before the restart" in line]
        notes += kept[:1]
        results = _results(out)
        audit = deployed.verify_audit(out, results.get("run_id", ""))
    events = _events(out)
    notes += _failures(results) + _error(results)
    ok = results.get("status") == "completed" and (results.get("resumed") or 0) >= 1
    return FaultOutcome(
        f"SuperLink killed mid-{phase} (SIGKILL), restarted, run resumed", "completes, finished work kept",
        results.get("status"), ok, _redone(events), audit, time.monotonic() - start, notes,
    )  # fmt: skip


def superlink_killed_mid_block(root: Path) -> FaultOutcome:
    return _superlink_killed(root, "block")


def superlink_killed_mid_fuse(root: Path) -> FaultOutcome:
    return _superlink_killed(root, "fuse")


def coordinator_interrupted(root: Path) -> FaultOutcome:
    start = time.monotonic()
    out = root / "out"
    with deployment(root) as deployed:
        run = deployed.start_run(out)
        _wait_for(lambda: "phase block" in _text(out / ".flower" / "run.log") or run.poll() is not None, 300, "block")
        run.send_signal(signal.SIGINT)
        code = run.wait(timeout=60)
        said = _text(deployed.logs / "run-0.log")
        stopped = _fedlego(
            ["stop", "--superlink", f"127.0.0.1:{deployed.port}", "--certs", str(deployed.certs), "--out", str(out)],
            deployed.root,
        )
        results = _results(out)
        audit = deployed.verify_audit(out, results.get("run_id", ""))
    notes = [f"fedlego run exit code {code}; said how to stop: {'fedlego stop' in said}",
             f"fedlego stop exit code {stopped.returncode}"]  # fmt: skip
    ok = code == 130 and stopped.returncode == 0 and results.get("status") == "stopped"
    return FaultOutcome(
        "coordinator Ctrl-C, then fedlego stop", "stopped on record", results.get("status"), ok,
        _redone(_events(out)), audit, time.monotonic() - start, notes,
    )  # fmt: skip


SCENARIOS = {
    "site-killed-mid-fuse": site_killed_mid_fuse,
    "superlink-killed-mid-block": superlink_killed_mid_block,
    "superlink-killed-mid-fuse": superlink_killed_mid_fuse,
    "coordinator-interrupted": coordinator_interrupted,
}
