"""What the coordinator keeps on disk for a run: the audit log, the checkpoint it resumes from,
the package files, results.json and the report. Without an output folder it keeps nothing."""

from __future__ import annotations

import datetime
import fcntl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlego.common.audit_head import AuditHead
from fedlego.server.audit import AuditLog
from fedlego.server.checkpoint import Checkpoint
from fedlego.server.report import write_report
from fedlego.server.results import RESULTS_NAME, RunResults

ENDINGS = ("run-completed", "run-failed", "run-stopped")
"""Audit events that end an attempt on record."""


class RecordError(RuntimeError):
    """The run folder cannot be used (a broken audit log or checkpoint, another run's checkpoint)."""


@dataclass
class Progress:
    """Where a run stands: the phases finished and the progress inside the current one."""

    completed: list[str] = field(default_factory=list)
    inside: dict[str, Any] = field(default_factory=dict)


LOCK_NAME = "run.lock"
"""A lock file in the run folder, held by the process that writes the run (released at its exit,
even when killed), so two processes never write one run folder at once."""


def lock_run_folder(out_dir: Path, wait: float = 0.0) -> IO[str]:
    """Hold the run folder's lock (an open file: close it to release); waits up to ``wait``
    seconds for another holder, then raises RecordError."""
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = (out_dir / LOCK_NAME).open("w")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                raise RecordError(
                    f"{out_dir} is being written by another coordinator process (its {LOCK_NAME} is held)"
                ) from None
            time.sleep(0.5)


class RunRecorder:
    """The run folder ``out_dir`` (None: record nothing but keep results in memory)."""

    def __init__(self, out_dir: Path | None, results: RunResults, log: Callable[[str], None] = print) -> None:
        self.out_dir = Path(out_dir) if out_dir else None
        self.results = results
        self.log = log
        self.progress = Progress()
        self.audit_log: AuditLog | None = None
        self.checkpoint = Checkpoint(self.out_dir / "checkpoint") if self.out_dir else None
        self._lock: IO[str] | None = None
        self.signing_key: Ed25519PrivateKey | None = None
        """The coordinator's key: signs the audit heads sent to sites and kept in the results."""

    def open(self, settings: dict[str, Any]) -> None:
        """Open the audit log and, when the folder holds a checkpoint of this run, resume it
        (``results`` and ``progress`` are then the checkpoint's)."""
        if self.out_dir is None:
            return
        try:
            self._lock = lock_run_folder(self.out_dir)
        except RecordError:
            self.out_dir, self.checkpoint = None, None  # write nothing into a folder another process owns
            raise
        try:
            self.audit_log = AuditLog(self.out_dir / "audit.jsonl")
            state = self.checkpoint.load() if self.checkpoint else None
        except ValueError as error:
            raise RecordError(str(error)) from error
        if state is None:
            self.audit("run-started", settings=settings)
            # on disk from the start (status None): a run killed before its first phase ends is
            # still found, and can be put on record by `fedlego stop`
            self.write_results()
            return
        run_id = self.results.run_id
        if state.get("run_id") != run_id:
            raise RecordError(
                f"{self.out_dir} holds a checkpoint of run {state.get('run_id')!r}, not {run_id!r}: "
                "resume with the same settings or use another output folder"
            )
        self.progress = Progress(list(state["completed"]), dict(state.get("progress", {})))
        self.results = RunResults.from_dict(state["results"])
        self.results.resumed = (self.results.resumed or 0) + 1
        self.log(f"resuming run {run_id}: finished phases {self.progress.completed}")
        last = self.audit_log.last_entry()
        if last is not None and last.get("event") not in ENDINGS:
            # the previous attempt died (killed, machine lost) without ending the run on record
            self.audit("attempt-unfinished", last_event=last.get("event"), last_time=last.get("time"))
        self.audit("run-resumed", completed=self.progress.completed)
        self.write_results()  # `prepare_run` removed the last attempt's: on disk again from the start

    def audit(self, event: str, **fields: Any) -> None:
        """Append an audit entry (and keep its head, signed when there is a key, in the results)."""
        if self.audit_log is not None:
            self.results.audit_head = self.audit_log.append(event, run_id=self.results.run_id, **fields)
            if self.signing_key is not None:
                self.results.audit_signature = self.head().signature

    def head(self) -> AuditHead | None:
        """The audit log's head now, signed with ``signing_key`` when set (None without a log)."""
        if self.audit_log is None:
            return None
        head = AuditHead(self.results.run_id, self.audit_log.sequence, self.audit_log.head)
        return head.signed(self.signing_key) if self.signing_key is not None else head

    def done(self, phase: str) -> bool:
        """Whether a phase finished in this run or before a resume."""
        return phase in self.progress.completed

    def save_progress(self, phase: str | None = None) -> None:
        """Record a finished phase (and the progress inside the current one), before going on."""
        if phase is not None and phase not in self.progress.completed:
            self.progress.completed.append(phase)
        if self.checkpoint is not None:
            self.checkpoint.save(
                {
                    "run_id": self.results.run_id,
                    "completed": self.progress.completed,
                    "progress": self.progress.inside,
                    "results": self.results.to_dict(),
                }
            )
            self.write_results()

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        """Checkpoint a state dict (fuse rounds)."""
        if self.checkpoint is not None:
            self.checkpoint.save_tensors(name, tensors)

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """A checkpointed state dict."""
        if self.checkpoint is None:
            raise RecordError("no checkpoint folder")
        return self.checkpoint.load_tensors(name)

    def save_package(self, name: str, data: bytes) -> None:
        """Write ``packages/<name>``."""
        if self.out_dir is None:
            return
        path = self.out_dir / "packages" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def package(self, name: str) -> bytes | None:
        """A package file written by this run (or before a resume), None when absent."""
        if self.out_dir is None:
            return None
        path = self.out_dir / "packages" / name
        return path.read_bytes() if path.exists() else None

    def write_results(self) -> None:
        """Write results.json, whole or not at all (a process killed while writing leaves the
        previous version)."""
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        partial = self.out_dir / f".{RESULTS_NAME}.partial"
        partial.write_text(self.results.to_json())
        partial.replace(self.out_dir / RESULTS_NAME)

    def close(self) -> None:
        """Release the run folder (another process may then resume or record it)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def write_report(self) -> None:
        """``report.html`` rendered from results.json as written; a failure is logged, never raised."""
        if self.out_dir is None:
            return
        try:
            write_report(RunResults.read(self.out_dir / RESULTS_NAME), self.out_dir)
        except Exception as error:  # the report is a view of results.json, which is already safe on disk
            self.log(f"report not written: {type(error).__name__}: {error}")


def record_stop(
    out_dir: Path, reason: str, wait: float = 60.0, signing_key: Ed25519PrivateKey | None = None
) -> RunResults | None:
    """Put a run stopped from outside (``fedlego stop``) on record once its coordinator process
    has let go of the folder (up to ``wait`` seconds): ``status`` stopped with the reason in
    results.json and a ``run-stopped`` audit entry, unless the run already ended on record (its
    results are then returned unchanged). The new head is signed with the coordinator's
    ``signing_key`` when given, else left unsigned. None when ``out_dir`` holds no results once
    the coordinator let go."""
    out_dir = Path(out_dir)
    path = out_dir / RESULTS_NAME
    if not out_dir.is_dir():
        return None
    # the coordinator may still be writing its last results.json: wait for it before looking
    with lock_run_folder(out_dir, wait):
        if not path.exists():
            return None
        results = RunResults.read(path)
        if results.status is not None:
            return results
        try:
            audit = AuditLog(out_dir / "audit.jsonl")
        except ValueError as error:
            raise RecordError(str(error)) from error
        results.status, results.error = "stopped", reason
        results.finished_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        results.audit_head = audit.append("run-stopped", run_id=results.run_id, reason=reason)
        head = AuditHead(results.run_id, audit.sequence, audit.head)
        results.audit_signature = head.signed(signing_key).signature if signing_key is not None else None
        recorder = RunRecorder(out_dir, results)
        recorder.write_results()
        recorder.write_report()
    return results
