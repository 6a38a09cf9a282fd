"""Robustness: hostile block packages from a trusted, signed site, and faults injected into a
secure loopback deployment.

    python bench/robustness.py --out docs/benchmarks [--trials 10] [--scenarios ...] [--skip-hostile]

1. **Hostile packages** (``bench/hostile.py``): a signed TCGA-ACC federation (three hospitals,
   clinical and RNA) in which the hospital whose clinical block the merge uses sends, instead,
   a mutated package re-hashed and re-signed with its own key; each of ``--trials`` random JSON
   value, JSON structure and tensor mutations, and fixed size, amplification, identity,
   signature, bytes and sabotage cases. Verdicts: refused (with the reason), accepted harmless
   (the merged model's metrics unchanged), poisoned (the merged model changed), crashed.
2. **Faults** (``bench/faults.py``): a site SIGKILLed mid-fuse; the SuperLink SIGKILLed mid-block
   and mid-fuse, restarted, and the run resumed; the coordinator's ``fedlego run`` interrupted
   (Ctrl-C) and ``fedlego stop``. Whether the run ended as expected, whether finished work was
   redone, and whether the audit log verifies against the results and every site's signed heads.

Writes ``OUT/robustness.json`` and ``OUT/robustness.md`` (about 30 min on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedlego_bench.faults import SCENARIOS
from fedlego_bench.hostile import run_hostile
from fedlego_bench.standalone import command_line, write_page

VERDICTS = ["refused", "accepted, harmless", "poisoned", "crashed"]


def render(document: dict[str, Any]) -> str:
    """The page from the JSON document."""
    lines = [
        "# Robustness: hostile packages and injected faults",
        "",
        f"`{document['command']}` ({document['date']}, {document['minutes']:.1f} min, 2 cores).",
        "",
    ]
    hostile = document.get("hostile")
    if hostile:
        totals = Counter(t["verdict"] for t in hostile["trials"])
        lines += [
            "## Hostile block packages from a trusted, signed site",
            "",
            f"A signed TCGA-ACC federation (sites {', '.join(hostile['sites'])}; clinical and RNA). The site "
            f"`{hostile['target'].split('/')[0]}` sends, for its {hostile['target'].split('/')[1]} block (the one the "
            "merge uses), a mutated package, re-hashed and re-signed with its own key (signature cases excepted). "
            "Honest pooled merge c-index: "
            f"{hostile['honest_metric']:.3f}. {len(hostile['trials'])} packages: "
            + ", ".join(f"{totals.get(v, 0)} {v}" for v in VERDICTS)
            + ".",
            "",
            "| kind | tried | " + " | ".join(VERDICTS) + " |",
            "|---|---|" + "---|" * len(VERDICTS),
        ]
        for row in hostile["table"]:
            lines.append(
                f"| {row['kind']} | {row['tried']} | " + " | ".join(str(row.get(v, 0)) for v in VERDICTS) + " |"
            )
        lines += ["", "Every package that was not refused, and a sample of the refusals:", ""]
        shown = [t for t in hostile["trials"] if t["verdict"] != "refused"]
        reasons = {}
        for trial in hostile["trials"]:
            if trial["verdict"] == "refused":
                reasons.setdefault(trial["kind"], trial)
        lines += ["| kind | case | verdict | detail |", "|---|---|---|---|"]
        for trial in shown + list(reasons.values()):
            detail = (trial["reason"] + (f" ({trial['detail']})" if trial["detail"] else "")).replace("|", "/")
            lines.append(f"| {trial['kind']} | {trial['what']} | {trial['verdict']} | {detail[:220]} |")
        lines.append("")
    faults = document.get("faults")
    if faults:
        lines += [
            "## Faults injected into a secure loopback deployment",
            "",
            "Four hospitals (`export-sites --paired-sites 2`) and a SuperLink with TLS, SuperNode authentication "
            "and signed packages, each its own process on 127.0.0.1, driven through `fedlego` commands."
            + (f" These rows are from `{document['faults_from']}`." if document.get("faults_from") else ""),
            "",
            "| fault | expected | status | as expected | work redone | audit log (with the sites' heads) "
            "| seconds | notes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for fault in faults:
            notes = "; ".join(fault["notes"]).replace("|", "/")
            lines.append(
                f"| {fault['scenario']} | {fault['expected']} | {fault['status']} | "
                f"{'yes' if fault['ok'] else 'NO'} | {fault['redone']} | {fault['audit'][:120]} | "
                f"{fault['seconds']:.0f} | {notes[:300]} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--trials", type=int, default=10, help="random mutations of each random kind")
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--skip-hostile", action="store_true")
    parser.add_argument(
        "--reuse-faults",
        action="store_true",
        help="keep the fault rows of OUT/robustness.json (with their own command and date) instead of running them",
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    document: dict[str, Any] = {
        "command": command_line("robustness.py", argv),
        "date": datetime.date.today().isoformat(),
    }
    with tempfile.TemporaryDirectory(prefix="fedlego-robustness-") as work:
        if not args.skip_hostile:
            report = run_hostile(Path(work) / "hostile", args.trials)
            document["hostile"] = {
                "sites": ["clinical", "rna", "paired-0"],
                "target": report.target,
                "honest_metric": report.honest_metric,
                "table": report.table(),
                "trials": [asdict(t) for t in report.trials],
            }
        document["faults"] = []
        if args.reuse_faults:
            previous = json.loads((args.out / "robustness.json").read_text())
            document["faults"] = previous["faults"]
            document["faults_from"] = previous.get("faults_from") or f"{previous['command']} ({previous['date']})"
        for name in [] if args.reuse_faults else args.scenarios:
            print(f"fault: {name}", flush=True)
            try:
                outcome = asdict(SCENARIOS[name](Path(work) / name))
            except Exception as error:  # a scenario that cannot finish is a finding, recorded as such
                reason = f"{type(error).__name__}: {error}"[:300]
                outcome = {"scenario": name, "expected": "", "status": None, "ok": False, "redone": "?",
                           "audit": "?", "seconds": 0.0, "notes": [reason]}  # fmt: skip
            document["faults"].append(outcome)
            print(f"  {outcome['status']} ok={outcome['ok']} {outcome['notes']}", flush=True)
    document["minutes"] = (time.monotonic() - start) / 60
    write_page(args.out, "robustness", document, render)
    crashed = [t for t in document.get("hostile", {}).get("trials", []) if t["verdict"] == "crashed"]
    return 1 if crashed or not all(f["ok"] for f in document["faults"]) else 0


if __name__ == "__main__":
    sys.exit(main())
