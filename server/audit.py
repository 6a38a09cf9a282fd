"""The coordinator's append-only audit log: JSON lines chained by SHA-256.

Every entry carries its sequence number, the hash of the previous entry and its own hash over
its canonical JSON. Changing an entry breaks its hash; deleting or reordering entries breaks the
chain; cutting entries off the end is caught by comparing the last hash with the one recorded in
``results.json`` (``audit_head``). Rewriting the whole log (and results.json) consistently is
caught by the signed heads the sites kept (:func:`check_site_copies`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedlego.common.audit_head import AuditHead, check_copy, read_copy

GENESIS = "0" * 64


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class AuditLog:
    """Appends chained entries to a JSON-lines file (continuing an existing chain)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sequence, self.head = 0, GENESIS
        if self.path.exists():
            report = verify_log(self.path)
            if not report.ok:
                raise ValueError(f"{self.path}: existing audit log is broken, refusing to extend it: {report.problem}")
            self.sequence, self.head = report.entries, report.head

    def last_entry(self) -> dict[str, Any] | None:
        """The newest entry of the log (None when it is empty)."""
        if not self.path.exists():
            return None
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None

    def append(self, event: str, **fields: Any) -> str:
        """Record one event; returns the new head hash."""
        entry = {
            "seq": self.sequence,
            "time": datetime.datetime.now(datetime.UTC).isoformat(),
            "event": event,
            **fields,
            "previous": self.head,
        }
        entry["hash"] = _entry_hash(entry)
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
        self.sequence += 1
        self.head = entry["hash"]
        return self.head


@dataclass
class AuditReport:
    """Result of checking a log: entries read, last hash, and the first problem found."""

    entries: int
    head: str
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_log(path: Path, expected_head: str | None = None) -> AuditReport:
    """Check every entry's hash, the chain and the sequence (and the head, when given)."""
    head, count = GENESIS, 0
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        return AuditReport(0, head, f"cannot read {path}: {error}")
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return AuditReport(count, head, f"line {number}: not JSON")
        if entry.get("hash") != _entry_hash(entry):
            return AuditReport(count, head, f"line {number} (seq {entry.get('seq')}): entry modified (hash mismatch)")
        if entry.get("previous") != head or entry.get("seq") != count:
            return AuditReport(
                count,
                head,
                f"line {number} (seq {entry.get('seq')}): chain broken "
                f"(an entry before it was deleted, inserted or reordered)",
            )
        head, count = entry["hash"], count + 1
    if expected_head is not None and head != expected_head:
        return AuditReport(
            count,
            head,
            f"the log ends at {head[:12]}…, the run recorded {expected_head[:12]}… (entries were removed from the end)",
        )
    return AuditReport(count, head)


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The log's entries in order (check it with :func:`verify_log` first)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def check_site_copies(path: Path, copies: list[Path], key: Ed25519PublicKey | None = None) -> dict[Path, list[str]]:
    """Per site copy of received heads (``fedlego site --audit-dir``), its disagreements with the
    log at ``path`` (empty: they agree); with ``key`` every head must be the coordinator's."""
    entries = read_entries(path)
    problems = {}
    for copy in copies:
        try:
            heads = read_copy(copy)
        except (OSError, ValueError) as error:
            problems[copy] = [f"cannot read: {error}"]
            continue
        problems[copy] = check_copy(entries, heads, key) if heads else ["holds no audit head"]
    return problems


def check_results_signature(results_head: AuditHead, key: Ed25519PublicKey) -> str | None:
    """Why the results' recorded head is not the coordinator's (None when it is)."""
    try:
        results_head.verify(key)
    except ValueError as error:
        return f"results.json: {error}"
    return None
