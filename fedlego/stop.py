"""``fedlego stop``: end a deployment run at the SuperLink and put the stop on record.

``flwr stop`` ends the ServerApp; Flower then terminates its process, which may die before it
writes anything. So once the SuperLink reports the run finished and the ServerApp has let go of
the run folder's lock, the folder (on this machine: the SuperLink's, as for ``fedlego run``) gets
``status`` stopped in results.json and a ``run-stopped`` audit entry, unless the ServerApp
already ended the run on record itself.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlego.launcher import CONNECTION, RUN_STARTED, LaunchError, check_address, flwr_json, write_connection
from fedlego.server.recorder import record_stop
from fedlego.server.results import RunResults

FINISHED = "finished"
"""Prefix of a Flower run status once the run has ended (``finished:stopped`` and others)."""


def announced_run_id(out_dir: Path) -> str | None:
    """The Flower run id that ``fedlego run --out OUT`` recorded in ``OUT/.flower/run.log``."""
    log = Path(out_dir) / ".flower" / "run.log"
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(RUN_STARTED):
            return line.split()[-1]
    return None


def run_status(run_id: str, flwr_home: Path) -> str:
    """The SuperLink's status of a run (``running``, ``finished:stopped``, ...)."""
    answer = flwr_json(["ls", CONNECTION, "--run-id", run_id], flwr_home)
    runs = answer.get("runs") or []
    if not answer.get("success") or not runs:
        raise LaunchError(f"cannot read the status of run {run_id}: {answer.get('error-message', answer)}")
    return str(runs[0].get("status", ""))


def stop_run(
    superlink: str,
    out_dir: Path,
    ca: Path | None = None,
    run_id: str | None = None,
    wait: float = 60.0,
    echo: Callable[[str], None] = print,
    signing_key: Ed25519PrivateKey | None = None,
) -> RunResults | None:
    """Stop the run that writes to ``out_dir`` (Flower run ``run_id``, else the one its
    ``fedlego run`` announced), wait up to ``wait`` seconds for the SuperLink to finish it and
    record the stop in ``out_dir``; returns the recorded results (None when ``out_dir`` holds
    none on this machine). ``ca``: the consortium CA (TLS), None for an insecure SuperLink;
    ``signing_key``: the coordinator's, to sign the recorded audit head."""
    check_address(superlink)
    out_dir = Path(out_dir).resolve()
    run_id = run_id or announced_run_id(out_dir)
    if not run_id:
        raise LaunchError(f"no run id: {out_dir / '.flower' / 'run.log'} names none; pass --run-id (see `flwr ls`)")
    with tempfile.TemporaryDirectory(prefix="fedlego-stop-") as home:
        flwr_home = Path(home)
        write_connection(flwr_home, superlink, ca)
        answer = flwr_json(["stop", run_id, CONNECTION], flwr_home)
        message = str(answer.get("error-message", ""))
        if answer.get("success"):
            echo(f"fedlego stop: run {run_id} stopped at the SuperLink {superlink}")
        elif "already finished" in message:
            echo(f"fedlego stop: run {run_id} had already finished")
        else:
            raise LaunchError(f"cannot stop run {run_id} at {superlink}: {message or answer}")
        deadline = time.monotonic() + wait
        while not run_status(run_id, flwr_home).startswith(FINISHED):
            if time.monotonic() > deadline:
                raise LaunchError(f"run {run_id} was stopped but not finished after {wait:.0f} s; nothing recorded")
            time.sleep(1.0)
    results = record_stop(out_dir, f"stopped by `fedlego stop` (Flower run {run_id})", wait, signing_key)
    if results is None:
        echo(f"fedlego stop: no results.json in {out_dir} on this machine: nothing recorded here")
    return results
