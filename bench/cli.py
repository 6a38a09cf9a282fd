"""``fedlego-bench COMMAND [options]``: one command per benchmark module (each also runs as
``python bench/<module>.py``); ``fedlego-bench COMMAND --help`` for its options."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "suite": "the benchmark suite: bundled cohorts, ablations, cost (make bench)",
    "panel": "repeated CV on the ten-cohort development panel with a meta-analysis",
    "repeated": "repeated cross-validation on the bundled cohorts",
    "block-design": "block designs compared on the panel's validation patients",
    "block-ceiling": "blocks against what their modality can give",
    "splits": "realistic hospital splits: federated round strategies against centralized training",
    "weighting": "merge weightings",
    "disclosure": "what the disclosure threshold costs",
    "privacy": "differential privacy: budget against accuracy",
    "robustness": "faulty and hostile sites",
    "scale": "time and memory as cohorts and sites grow",
    "pretrained": "frozen pre-trained encoders against training from scratch",
    "encoder-bytes": "bytes sent with frozen encoders by reference",
    "compare": "two benchmark result files side by side",
}
"""Command -> what it measures; the module is the command with ``_`` for ``-``."""


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark command with the remaining arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
        print("usage: fedlego-bench COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if args and args[0] in ("-h", "--help") else 2
    command, rest = args[0], args[1:]
    module = importlib.import_module(f"fedlego_bench.{command.replace('-', '_')}")
    sys.argv = [f"fedlego-bench {command}", *rest]
    result = module.main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
