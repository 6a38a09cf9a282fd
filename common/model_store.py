"""The local model store: pre-trained encoder weights kept by every party, found by their SHA-256.

A frozen pre-trained encoder need not travel: its package names the SHA-256 of its weights file,
and every party that runs the block (sites, the coordinator, ``fedlego predict``) loads the file
``<store>/<sha256>.safetensors`` from its own store and refuses on a missing file or another hash.
The store is the folder in ``FEDLEGO_MODEL_STORE``, by default ``~/.cache/fedlego/models``;
``fedlego models add FILE`` puts a file there. Weights are read with ``safetensors`` (no code
runs) or, for ``.pt``/``.pth`` files, ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STORE_ENV = "FEDLEGO_MODEL_STORE"
DEFAULT_STORE = Path("~/.cache/fedlego/models")


class WeightsError(ValueError):
    """Encoder weights that are missing, unreadable or not the ones a package names."""


def store_folder() -> Path:
    """The model store of this process (``FEDLEGO_MODEL_STORE`` or the default)."""
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE).expanduser()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``weights_only`` torch file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if path.suffix in (".pt", ".pth", ".bin"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            state = load_file(str(path))
    except Exception as error:  # any reader failure is a bad file, reported with its name
        raise WeightsError(f"{path}: cannot read encoder weights ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


def add_to_store(path: Path, store: Path | None = None) -> str:
    """Copy a weights file into the store under its SHA-256 (as safetensors); returns the hash."""
    store = store or store_folder()
    path = Path(path)
    if path.suffix != ".safetensors":
        converted = store / f".incoming-{os.getpid()}.safetensors"
        store.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in read_weights(path).items()}, str(converted))
        path = converted
    else:
        read_weights(path)  # refuse garbage before it enters the store
    sha = file_sha256(path)
    target = store / f"{sha}.safetensors"
    if not target.exists():
        store.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(f".tmp-{os.getpid()}")
        shutil.copyfile(path, temporary)
        os.replace(temporary, target)
    if path.name.startswith(".incoming-"):
        path.unlink()
    return sha


def load_from_store(sha: str, store: Path | None = None) -> dict[str, torch.Tensor]:
    """The weights a package names by SHA-256, checked against that hash."""
    store = store or store_folder()
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise WeightsError(f"encoder weights hash {sha!r} is not a SHA-256 hex digest")
    path = store / f"{sha}.safetensors"
    if not path.is_file():
        raise WeightsError(
            f"encoder weights {sha[:12]}... not in the model store {store} "
            f"(get the file from the site that made it and run `fedlego models add FILE`)"
        )
    actual = file_sha256(path)
    if actual != sha:
        raise WeightsError(f"{path}: SHA-256 is {actual[:12]}..., the package names {sha[:12]}... (file altered)")
    return read_weights(path)


def save_weights(module: torch.nn.Module, path: Path) -> str:
    """Save a module's state dict as safetensors; returns the file's SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(path))
    return file_sha256(path)


def load_encoder_weights(encoder: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Pre-trained weights into an encoder: every tensor must match by name and shape."""
    expected = encoder.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{where}: weights do not fit the encoder (missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"other shapes {wrong[:5]})"
        )
    encoder.load_state_dict(state)
