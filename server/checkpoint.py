"""The coordinator's checkpoint: what finished, so a restarted coordinator resumes there.

``state.json`` holds the progress and the results so far; tensors (fuse-round states) are saved
with ``torch.save`` and read back with ``weights_only=True`` (no code is unpickled). Every write
goes to a temporary file first and is renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


class Checkpoint:
    """A folder holding ``state.json`` and tensor files."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _replace(self, path: Path, write) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        write(temporary)
        os.replace(temporary, path)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none."""
        path = self.folder / "state.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: checkpoint is not valid JSON ({error})") from error

    def save(self, state: dict[str, Any]) -> None:
        """Replace the saved state."""
        text = json.dumps(state, indent=2, default=str)
        self._replace(self.folder / "state.json", lambda p: p.write_text(text))

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        """Save a state dict under ``name``."""
        self._replace(self.folder / f"{name}.pt", lambda p: torch.save(tensors, p))

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """A state dict saved under ``name`` (weights only)."""
        return torch.load(self.folder / f"{name}.pt", weights_only=True)
