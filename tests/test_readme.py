"""The README is a front door that works: its walkthrough runs verbatim (the fenced block after
``<!-- walkthrough -->``, each line in a fresh folder), it stays short, and its links resolve."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def walkthrough_commands() -> list[str]:
    """The command lines of the README's walkthrough block, comments stripped."""
    match = re.search(r"<!-- walkthrough -->\s*```bash\n(.*?)```", README, re.S)
    assert match, "README.md has no walkthrough block"
    lines = [line.split("  #")[0].strip() for line in match.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_is_short_and_its_links_resolve():
    assert len(README.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)#\s]+)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


@pytest.mark.timeout(600)
def test_the_readme_walkthrough_runs_verbatim(tmp_path):
    commands = walkthrough_commands()
    assert [shlex.split(c)[:2] for c in commands] == [
        ["fedlego", "export-sites"],
        ["fedlego", "check"],
        ["fedlego", "centralized"],
        ["fedlego", "simulate"],
    ]
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        result = subprocess.run(
            command, shell=True, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    for run in ("runs/mine", "runs/mine-fed"):
        results = json.loads((tmp_path / run / "results.json").read_text())
        assert results.get("status", "completed") == "completed"
