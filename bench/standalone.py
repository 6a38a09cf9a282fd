"""What the stand-alone benchmark scripts (weighting.py, pretrained.py, encoder_bytes.py) share:
the command line they record and how they write their page."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def command_line(script: str, argv: list[str] | None) -> str:
    """The command as a reader would type it (``python bench/<script> ...``)."""
    return " ".join([f"python bench/{script}", *(argv if argv is not None else sys.argv[1:])])


def write_page(out: Path, stem: str, document: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
    """``OUT/<stem>.json`` and ``OUT/<stem>.md`` (rendered from the JSON document), and the page on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(document, indent=2))
    page = render(document)
    (out / f"{stem}.md").write_text(page)
    print(page)
