"""Command-line options shared by ``fedlego simulate`` and ``fedlego export-sites``: how a
bundled or synthetic cohort is cut into sites, and ``--set KEY=VALUE`` run-config overrides."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

SCENARIO_DATASETS = ("pbc", "synthetic", "tcga-acc")
_SCENARIO_OPTIONS = (
    "task", "layout", "sites_per_modality", "paired_sites", "paired_fraction", "overlap", "missing_rate",
    "imbalance", "synthetic_patients", "synthetic_modalities", "seed", "fold",
)  # fmt: skip


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """Options naming the dataset, the modalities and how patients are spread over sites."""
    parser.add_argument("--scenario", choices=SCENARIO_DATASETS, default="tcga-acc", help="dataset the sites come from")
    parser.add_argument("--modalities", help="comma-separated modalities (default: the dataset's preset)")
    parser.add_argument("--task", choices=["survival", "binary"], default="survival", help="PBC only: outcome")
    parser.add_argument("--layout", default="modality-sites", help="modality-sites (default) or pooled")
    parser.add_argument("--sites-per-modality", type=int, default=1)
    parser.add_argument("--paired-sites", type=int, default=1)
    parser.add_argument("--paired-fraction", type=float, default=0.3)
    parser.add_argument("--overlap", type=float, default=0.0, help="share of patients common to unimodal sites")
    parser.add_argument("--missing-rate", type=float, default=0.0, help="paired-site patients lacking a modality")
    parser.add_argument("--imbalance", type=float, default=0.0, help="skew of patient counts across unimodal sites")
    parser.add_argument("--synthetic-patients", type=int, default=300)
    parser.add_argument("--synthetic-modalities", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold", type=int, default=0, help="which patient-level fold (same as centralized)")


def scenario_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config keys the scenario options set."""
    overrides: dict[str, Any] = {"dataset": args.scenario}
    overrides.update({name.replace("_", "-"): getattr(args, name) for name in _SCENARIO_OPTIONS})
    if args.modalities:
        overrides["modalities"] = args.modalities
    return overrides


def parse_value(text: str) -> Any:
    """A ``--set`` value: int, float, true/false, or the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def set_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as run-config overrides, with a clear error for anything else."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_value(value.strip())
    return overrides
