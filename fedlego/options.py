"""Command-line options generated from the run configuration (``fedlego.common.config``): one
``--KEY`` option per flat run-config key of the sections a command uses, and ``--set KEY=VALUE``
for any key. An option left out keeps the configuration's default, so every command shares them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fedlego.common.config import CHOICES, flat_defaults, flat_fields, key_help

SCENARIO_SECTIONS = ("scenario",)
"""What ``fedlego simulate`` and ``fedlego export-sites`` need to cut a cohort into sites."""
CENTRALIZED_SECTIONS = ("model", "training", "merge", "fuse", "privacy", "disclosure")
"""The sections the centralized pipeline uses (besides the data set)."""
CENTRALIZED_DATA_KEYS = ("dataset", "data", "task", "modalities", "synthetic-patients", "synthetic-modalities")
LIST_KEYS = {"modalities": "MODALITY", "site-folders": "FOLDER"}
"""Keys given as several words on the command line, joined with commas."""
PATH_KEYS = ("data", "site-folders", "trusted-sites", "coordinator-key", "out-dir", "schema")
"""Keys holding paths: made absolute (Flower runs the apps in other working directories)."""
DEPRECATED = {
    "block-epochs": ("--epochs",),
    "block-dp-epsilon": ("--dp-epsilon",),
    "block-dp-clip": ("--dp-clip",),
    "block-dp-delta": ("--dp-delta",),
    "dataset": ("--scenario",),
    "site-folders": ("--sites",),
    "data": ("--split",),
}
"""Older option names of run-config keys: they still work for one release, with a warning."""


class DeprecatedOption(argparse.Action):
    """An old spelling of an option: takes its value like the new one (``extend`` for list
    options) and warns on stderr which spelling to use; hidden from ``--help``."""

    def __init__(self, option_strings: Sequence[str], dest: str, replacement: str, extend: bool = False, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.replacement, self.extend = replacement, extend

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"fedlego: warning: {option_string} is deprecated and will be removed in the next release; "
            f"use {self.replacement}",
            file=sys.stderr,
        )
        if self.extend:
            values = [*(getattr(namespace, self.dest, None) or []), *values]
        setattr(namespace, self.dest, values)


def add_deprecated(group: argparse._ActionsContainer, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """``old`` as a deprecated spelling of the option ``new`` (same ``dest``, same type)."""
    group.add_argument(old, action=DeprecatedOption, dest=dest, replacement=new, default=None, **kwargs)


def _add_key(group: argparse._ActionsContainer, key: str, default: Any, extra_names: Sequence[str] = ()) -> None:
    _, _, kind = flat_fields()[key] if key != "seed" else (None, None, int)
    text = key_help(key)
    names = [f"--{key}", *extra_names]
    common: dict[str, Any] = {"dest": key, "default": None, "help": f"{text} (default: {default})".strip()}
    if kind is bool:
        group.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
    elif key in LIST_KEYS:  # separate words; repeated options add up
        group.add_argument(*names, action="extend", nargs="+", metavar=LIST_KEYS[key], **common)
        for old in DEPRECATED.get(key, ()):
            add_deprecated(group, old, f"--{key}", key, nargs="+", extend=True, metavar=LIST_KEYS[key])
    else:
        group.add_argument(*names, type=kind, choices=CHOICES.get(key), **common)
        for old in DEPRECATED.get(key, ()):
            add_deprecated(group, old, f"--{key}", key, type=kind, choices=CHOICES.get(key))


def add_config_arguments(
    parser: argparse.ArgumentParser,
    sections: Iterable[str] = (),
    keys: Iterable[str] = (),
    names: dict[str, Sequence[str]] | None = None,
    seed: bool = True,
) -> None:
    """One option per key of the given sections and per extra key, plus ``--seed`` unless
    ``seed`` is False; ``names`` gives a key more option names (``{"dataset": ["--cohort"]}``)."""
    wanted = set(sections)
    chosen = [k for k, (section, _, _) in flat_fields().items() if section.attribute in wanted]
    chosen += [k for k in keys if k not in chosen]
    group = parser.add_argument_group("run configuration (defaults as in `fedlego config`)")
    defaults = flat_defaults()
    for key in ["seed", *chosen] if seed else chosen:
        _add_key(group, key, defaults[key], (names or {}).get(key, ()))


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE``, repeatable, for any run-config key."""
    parser.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="any run-config keys (`fedlego config` lists them with their defaults): --set a=1 b=2 or repeated",
    )


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """Options naming the data set (``--dataset``), its modalities and how patients are spread
    over sites."""
    add_config_arguments(parser, SCENARIO_SECTIONS)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config keys given on the command line: options and ``--set`` items; a key given both
    ways with different values is an error (neither silently wins)."""
    known = set(flat_defaults())
    overrides = {k: v for k, v in vars(args).items() if k in known and v is not None}
    for key, value in overrides.items():
        if key in LIST_KEYS and any("," in str(item) for item in value):
            print(
                f"fedlego: warning: --{key} with commas is deprecated; give separate words "
                f"(--{key} {' '.join(p for item in value for p in str(item).split(',') if p)})",
                file=sys.stderr,
            )
    for key, value in set_overrides(getattr(args, "set", None) or []).items():
        if key in overrides and _joined(overrides[key]) != _joined(value):
            raise ValueError(f"--{key} {_joined(overrides[key])} and --set {key}={value} disagree: give the key once")
        overrides[key] = value
    for key in PATH_KEYS:
        if overrides.get(key):
            parts = overrides[key] if isinstance(overrides[key], list) else str(overrides[key]).split(",")
            overrides[key] = [str(Path(p.strip()).expanduser().resolve()) for p in parts if p.strip()]
    for key, value in overrides.items():
        if isinstance(value, list):  # `--modalities a b` and `--modalities a,b` alike
            overrides[key] = ",".join(part.strip() for item in value for part in str(item).split(",") if part.strip())
    return overrides


def _joined(value: Any) -> str:
    """A list option's words (or a --set value) as the comma-joined text of the run config."""
    items = value if isinstance(value, list) else [value]
    return ",".join(part.strip() for item in items for part in str(item).split(",") if part.strip())


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
