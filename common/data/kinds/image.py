"""``image``: one 2-D image per patient (H, W) or (H, W, C)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..dataset import ModalityData
from ..formats import read_images
from ..preprocess import ImagePreprocessor
from ..schema import ImageSpec
from .base import ArrayKind
from .registry import register_kind

if TYPE_CHECKING:
    from ..synthetic import SyntheticModality

SYNTHETIC_SIZE = 16
"""Side of a synthetic image (pixels)."""
MAX_CNN_WIDTH = 32
"""Channels of the reference CNN at most (it runs per patient on every site's CPU)."""


class ImageKind(ArrayKind):
    """A folder of image files or an ``.npz`` of ``ids`` and ``images``; its encoder receives ``x``
    (n, C, H, W). Reference encoder: ``small-cnn``."""

    name = "image"
    suffix = ".npz"
    preprocessor = ImagePreprocessor
    inputs: ClassVar[Mapping[str, str]] = {"x": "(n, C, H, W) float32"}
    schema_spec = ImageSpec

    def read(self, path: Path, name: str) -> ModalityData:
        return read_images(path, name)

    def write(self, data: ModalityData, path: Path) -> None:
        assert data.arrays is not None
        ids = sorted(data.arrays)
        images = np.stack([data.arrays[i] for i in ids])
        if images.dtype != np.uint8:
            raise ValueError(f"images of modality '{data.name}' must be uint8, got {images.dtype}")
        np.savez(path, ids=np.asarray(ids, dtype=str), images=images)

    def reference_encoder(self, tensors: Mapping[str, torch.Tensor], width: int, dropout: float) -> tuple[str, dict]:
        return "small-cnn", {"in_channels": tensors["x"].shape[1], "width": min(width, MAX_CNN_WIDTH)}

    def synthesize(
        self, spec: SyntheticModality, z: np.ndarray, ids: list[str], rng: np.random.Generator, source: str
    ) -> ModalityData:
        """A 16x16 ``uint8`` noise image with a Gaussian blob whose brightness follows ``z[0]`` and
        width ``z[1]`` (``n_features`` is ignored)."""
        grid = np.arange(SYNTHETIC_SIZE, dtype=float)
        rows, cols = np.meshgrid(grid, grid, indexing="ij")
        arrays: dict[str, np.ndarray] = {}
        for i, pid in enumerate(ids):
            centre = SYNTHETIC_SIZE / 2 - 0.5 + rng.uniform(-3.0, 3.0, size=2)
            width = 2.0 + 0.8 * np.tanh(z[i, 1])
            brightness = 100.0 + 80.0 * np.tanh(0.8 * z[i, 0])
            distance2 = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
            image = rng.normal(60.0, 15.0, size=rows.shape)
            image += brightness * np.exp(-distance2 / (2.0 * width**2))
            arrays[pid] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        return ModalityData(spec.name, self.name, source, arrays=arrays)

    def summary_features(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per channel mean, sd and maximum, and a 4x4 average-pooled thumbnail."""
        x = tensors["x"]
        pooled = F.adaptive_avg_pool2d(x, 4).flatten(1)
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), x.amax(dim=(2, 3)), pooled], dim=1)


register_kind(ImageKind)
