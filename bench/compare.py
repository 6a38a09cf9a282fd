"""Compare two sets of run outputs for a refactor that must not change behaviour.

    python bench/compare.py BEFORE AFTER

BEFORE and AFTER are folders holding the same runs (``demo/``, ``syn/``: federated run folders;
``central/``: a centralized run; ``bench-quick/``: ``bench/suite.py --quick`` output). Compared,
after removing what legitimately differs between two runs of the same settings (wall times,
dates, run ids and the hashes that contain them, load averages, memory, machine load):

- federated ``results.json``: everything; the config is compared by key, spelled with dashes
  (older results used underscores), and its differences are listed apart (new keys, output
  folders); payload bytes too (a protocol change may change them by the size of its field names);
- the audit log: the sequence of events, and each event's fields except hashes and run ids;
- centralized and benchmark ``results.json``: every metric and count.

Prints each difference and exits 1 if any outside the settings and the bytes (bytes fail too
with ``--strict-bytes``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

VOLATILE = {
    "wall_seconds", "finished_at", "seconds", "run_id", "audit_head", "date", "time", "hash", "previous",
    "content_hash", "sha256", "load_average_1min_before", "peak_rss_bytes", "peak_processes", "phase_seconds",
    "orchestrator_wall_seconds", "environment", "machine", "command", "figures", "seconds_per_fold", "timestamp",
    "blocks_hashes", "timing", "budget_seconds", "phase_time", "wall",
}  # fmt: skip
"""Keys whose values differ between two runs of the same settings."""
HASH = re.compile("[0-9a-f]{64}")


def _settings_path(line: str) -> bool:
    return any(part in line for part in ("/config/", "/settings/", "/out-dir"))


def _normal_key(key: str) -> str:
    return key.replace("_", "-")


def normalise(value: Any, path: str = "") -> Any:
    """Drop volatile keys; config keys with dashes; floats rounded to 10 significant digits."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in VOLATILE or key == "extra":
                continue
            name = _normal_key(key) if path.endswith(("config", "settings")) else key
            out[name] = normalise(item, f"{path}/{key}")
        return out
    if isinstance(value, list):
        return [normalise(v, f"{path}[]") for v in value]
    if isinstance(value, float):
        return float(f"{value:.10g}") if math.isfinite(value) else str(value)
    if isinstance(value, str) and HASH.fullmatch(value):
        return "<sha256>"  # content hashes cover the run id, which changes with the settings' spelling
    return value


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Every place where two normalised documents differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after), key=str):
            if key not in after:
                found.append(f"{path}/{key}: only before ({json.dumps(before[key], default=str)[:80]})")
            elif key not in before:
                found.append(f"{path}/{key}: only after ({json.dumps(after[key], default=str)[:80]})")
            else:
                found += differences(before[key], after[key], f"{path}/{key}")
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            d for i, (b, a) in enumerate(zip(before, after, strict=True)) for d in differences(b, a, f"{path}[{i}]")
        ]
    return (
        []
        if before == after
        else [f"{path}: {json.dumps(before, default=str)[:80]} -> {json.dumps(after, default=str)[:80]}"]
    )


def _without_bytes(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    phases = results.get("phases", {})
    traffic = {name: record.pop("bytes", {}) for name, record in phases.items()}
    return results, traffic


def compare_federated(before: Path, after: Path) -> tuple[list[str], list[str]]:
    """Differences in results.json and the audit log of two federated run folders, and the bytes."""
    old, old_bytes = _without_bytes(json.loads((before / "results.json").read_text()))
    new, new_bytes = _without_bytes(json.loads((after / "results.json").read_text()))
    found = differences(normalise(old), normalise(new), "results.json")
    bytes_found = differences(old_bytes, new_bytes, "bytes")
    events = [
        [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines()] for folder in (before, after)
    ]
    names = [[e["event"] for e in log] for log in events]
    if names[0] != names[1]:
        found.append(f"audit events: {names[0]} -> {names[1]}")
    else:
        for index, (b, a) in enumerate(zip(*events, strict=True)):
            found += differences(normalise(b), normalise(a), f"audit.jsonl[{index}:{b['event']}]")
    return found, bytes_found


def compare_document(before: Path, after: Path) -> list[str]:
    """Differences between two results.json documents (centralized or benchmark)."""
    return differences(
        normalise(json.loads(before.read_text())), normalise(json.loads(after.read_text())), before.parent.name
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--strict-bytes", action="store_true", help="fail on payload byte differences too")
    args = parser.parse_args(argv)
    failed = False
    for name in sorted(p.name for p in args.before.iterdir() if p.is_dir()):
        old, new = args.before / name, args.after / name
        if not (new / "results.json").exists():
            print(f"{name}: missing in {args.after}")
            failed = True
            continue
        if (old / "audit.jsonl").exists():
            found, traffic = compare_federated(old, new)
        else:
            found, traffic = compare_document(old / "results.json", new / "results.json"), []
        settings = [line for line in found if _settings_path(line)]
        traffic += [line for line in found if "/bytes/" in line and line not in settings]
        found = [line for line in found if not _settings_path(line) and "/bytes/" not in line]
        print(f"{name}: {'identical' if not found else f'{len(found)} differences'}", end="")
        print(f"; settings: {'identical' if not settings else f'{len(settings)} differences'}", end="")
        print(f"; payload bytes: {'identical' if not traffic else f'{len(traffic)} differences'}")
        for line in found + settings + traffic:
            print(f"  {line}")
        failed |= bool(found) or (args.strict_bytes and bool(traffic))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
