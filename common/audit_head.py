"""Signed heads of the coordinator's audit log, as the sites keep them.

The coordinator sends the head of its hash-chained audit log (entries so far and the last hash)
with every request, signed with its Ed25519 key. Each site appends the heads it receives to a
file in its own folder. A coordinator folder whose log was later rewritten, truncated or replaced
then disagrees with the heads any hospital holds, and the signature shows that the coordinator
itself sent them (:func:`check_copy`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOMAIN = b"fedlego-audit-head-v1"
CONFIG_KEY = "audit-head"
"""The request payload field carrying the head."""
HASH = re.compile(r"[0-9a-f]{64}")
MAX_RUN_ID = 200


@dataclass(frozen=True)
class AuditHead:
    """The audit log of run ``run_id`` after ``entries`` entries ends at hash ``head``;
    ``signature`` (hex, empty when unsigned) is the coordinator's over those three."""

    run_id: str
    entries: int
    head: str
    signature: str = ""

    def message(self) -> bytes:
        """The signed bytes: domain, run id, entry count, head."""
        parts = [DOMAIN, self.run_id.encode(), str(self.entries).encode(), self.head.encode()]
        return b"".join(len(part).to_bytes(4, "big") + part for part in parts)

    def signed(self, key: Ed25519PrivateKey) -> AuditHead:
        """This head signed with the coordinator's key."""
        return AuditHead(self.run_id, self.entries, self.head, key.sign(self.message()).hex())

    def verify(self, key: Ed25519PublicKey) -> None:
        """Raise ValueError unless the coordinator's ``key`` signed this head."""
        if not self.signature:
            raise ValueError(f"audit head {self.entries} of run {self.run_id!r} is unsigned")
        try:
            key.verify(bytes.fromhex(self.signature), self.message())
        except (InvalidSignature, ValueError) as error:
            raise ValueError(f"audit head {self.entries} of run {self.run_id!r}: bad signature") from error

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> AuditHead:
        """A head from plain values, each field checked (ValueError names the bad one)."""
        if not isinstance(values, dict):
            raise ValueError("audit head: not an object")
        run_id, entries, head, signature = (values.get(k) for k in ("run_id", "entries", "head", "signature"))
        if not isinstance(run_id, str) or not 0 < len(run_id) <= MAX_RUN_ID:
            raise ValueError("audit head: field 'run_id' must be a non-empty string")
        if not isinstance(entries, int) or isinstance(entries, bool) or entries < 0:
            raise ValueError("audit head: field 'entries' must be a count")
        if not isinstance(head, str) or not HASH.fullmatch(head):
            raise ValueError("audit head: field 'head' must be a SHA-256 hex digest")
        if not isinstance(signature, str) or (signature and not re.fullmatch(r"[0-9a-f]{128}", signature)):
            raise ValueError("audit head: field 'signature' must be an Ed25519 signature in hex")
        return cls(run_id, entries, head, signature)


def copy_path(folder: Path, run_id: str) -> Path:
    """A site's file of the heads it received for one run."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)[:MAX_RUN_ID]
    return Path(folder) / f"{safe}.jsonl"


def keep(head: AuditHead, folder: Path, received_with: str) -> Path:
    """Append a received head (with what it came with) to the site's copy for its run."""
    path = copy_path(folder, head.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps({**head.to_dict(), "received_with": received_with}, sort_keys=True) + "\n")
    return path


def read_copy(path: Path) -> list[AuditHead]:
    """The heads in a site's copy (ValueError names the bad line)."""
    heads = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            heads.append(AuditHead.from_dict(json.loads(line)))
        except (json.JSONDecodeError, ValueError) as error:
            raise ValueError(f"{path}: line {number}: {error}") from error
    return heads


def check_copy(
    entries: Sequence[dict[str, Any]], heads: Sequence[AuditHead], key: Ed25519PublicKey | None
) -> list[str]:
    """Problems between a coordinator's log (``entries``, in order) and the heads a site
    received: a head the log no longer reaches, or whose entry has another hash or run, means
    entries were removed or rewritten after that head was sent; with ``key`` every head must
    carry the coordinator's signature. Empty when they agree."""
    problems = []
    for number, head in enumerate(heads, start=1):
        if key is not None:
            try:
                head.verify(key)
            except ValueError as error:
                problems.append(f"head {number}: {error}")
                continue
        if head.entries > len(entries):
            problems.append(
                f"head {number}: the site was told of {head.entries} entries, the log has {len(entries)} "
                "(entries were removed)"
            )
        elif head.entries > 0:
            entry = entries[head.entries - 1]
            if entry.get("hash") != head.head or entry.get("run_id") != head.run_id:
                problems.append(
                    f"head {number}: entry {head.entries - 1} is not the one the site was told of "
                    "(the log was rewritten up to there, or it is another run's log)"
                )
    return problems
