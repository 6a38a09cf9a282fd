"""The wheel holds every package of the source tree (a subpackage missing from pyproject.toml's
list works in the editable install and breaks every real one)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_package_is_in_the_distribution():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, folders = set(setuptools["packages"]), setuptools["package-dir"]
    found = set()
    for name in ("fedlego", "fedlego.common", "fedlego.server", "fedlego.client"):
        top = ROOT / folders[name]
        for init in top.rglob("__init__.py"):
            relative = init.parent.relative_to(top).parts
            found.add(".".join((name, *relative)))
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert all((ROOT / folders[p]).is_dir() for p in listed if p in folders)
