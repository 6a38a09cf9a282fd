"""``bags``: a bag of instance feature vectors per patient (instances, F), e.g. slide tiles."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from fedlego.common.lego import pool_tokens

from ..dataset import ModalityData
from ..formats import read_bags
from ..preprocess import BagPreprocessor
from ..schema import BagsSpec
from .base import ArrayKind
from .registry import register_kind

if TYPE_CHECKING:
    from ..synthetic import SyntheticModality

MAX_SYNTHETIC_BAG = 12
"""Most instances in a synthetic bag (at least 2)."""
KEY_INSTANCE_FRACTION = 0.3
"""Share of a synthetic bag's instances that carry the signal."""


class BagsKind(ArrayKind):
    """A folder of per-patient ``.npy`` matrices or one ``.npz`` keyed by patient id; its encoder
    receives ``x`` (n, B, F) and ``mask`` (n, B). Reference encoder: ``gated-attention-mil``."""

    name = "bags"
    suffix = ".npz"
    preprocessor = BagPreprocessor
    inputs: ClassVar[Mapping[str, str]] = {"x": "(n, B, F) float32", "mask": "(n, B) float32, 1 for real instances"}
    schema_spec = BagsSpec

    def read(self, path: Path, name: str) -> ModalityData:
        return read_bags(path, name)

    def write(self, data: ModalityData, path: Path) -> None:
        assert data.arrays is not None
        np.savez(path, **data.arrays)

    def reference_encoder(self, tensors: Mapping[str, torch.Tensor], width: int, dropout: float) -> tuple[str, dict]:
        return "gated-attention-mil", {"in_features": tensors["x"].shape[-1], "width": width, "dropout": dropout}

    def synthesize(
        self, spec: SyntheticModality, z: np.ndarray, ids: list[str], rng: np.random.Generator, source: str
    ) -> ModalityData:
        """2-12 instances of ``n_features`` each; about 30 % of them ("key instances") shifted by ``C z``."""
        shift_w = 1.5 * rng.normal(size=(spec.n_features, z.shape[1])) / np.sqrt(z.shape[1])
        arrays: dict[str, np.ndarray] = {}
        for i, pid in enumerate(ids):
            size = int(rng.integers(2, MAX_SYNTHETIC_BAG + 1))
            bag = rng.normal(size=(size, spec.n_features))
            n_key = max(1, round(KEY_INSTANCE_FRACTION * size))
            key = rng.choice(size, size=n_key, replace=False)
            bag[key] += z[i] @ shift_w.T
            arrays[pid] = bag.astype(np.float32)
        return ModalityData(spec.name, self.name, source, arrays=arrays)

    def summary_features(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The mean of the bag's instances."""
        return pool_tokens(tensors["x"], tensors["mask"])


register_kind(BagsKind)
