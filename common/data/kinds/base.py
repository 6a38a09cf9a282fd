"""The contract a modality kind fulfils: one object per kind, in one module, holding everything
that differs between kinds (see ``docs/extending.md``).

A kind says how its data is held in a :class:`ModalityData` (a wide table, a long table or one
array per patient), how it is read from and written to a site folder, which preprocessor turns it
into tensors (and so which tensors an encoder receives), which encoder is its reference, how the
synthetic cohort generates it and how the classical baselines summarise it. Everything outside the
kind modules asks the registry (:func:`fedlego.common.data.kinds.modality_kind`) instead of testing
kind names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from ..dataset import ModalityData
from ..errors import SiteDataError

if TYPE_CHECKING:
    import torch

    from ..preprocess import Preprocessor
    from ..synthetic import SyntheticModality


class ModalityKind(ABC):
    """One kind of modality data. Subclass one of :class:`WideTableKind`, :class:`LongTableKind`
    or :class:`ArrayKind` (they say how the data is held) and register an instance."""

    name: ClassVar[str]
    """The kind's name in ``site.json``, packages and schemas."""
    suffix: ClassVar[str]
    """File suffix of the modality in a site folder written by ``write_site_folder``."""
    preprocessor: ClassVar[type[Preprocessor]]
    """Fitted on training patients; its ``transform`` gives the tensors the encoder receives."""
    inputs: ClassVar[Mapping[str, str]]
    """The keyword arguments an encoder of this kind is called with, and their shapes."""
    schema_spec: ClassVar[type | None] = None
    """The consortium-schema spec class (``from_data``, ``from_dict``, ``to_dict``, ``check``);
    None: the schema records the kind and checks nothing more."""

    @abstractmethod
    def read(self, path: Path, name: str) -> ModalityData:
        """The modality stored at ``path`` (file or folder), validated; problems raise
        :class:`SiteDataError` naming the file, field and rows."""

    @abstractmethod
    def write(self, data: ModalityData, path: Path) -> None:
        """Store ``data`` at ``path`` (which ends in :attr:`suffix`) in the format :meth:`read` reads."""

    @abstractmethod
    def patient_ids(self, data: ModalityData) -> list[str]:
        """Sorted ids of the patients holding this modality."""

    @abstractmethod
    def subset(self, data: ModalityData, ids: set[str]) -> ModalityData:
        """The modality restricted to ``ids`` (absent ids ignored)."""

    @abstractmethod
    def reference_encoder(self, tensors: Mapping[str, torch.Tensor], width: int, dropout: float) -> tuple[str, dict]:
        """The reference encoder's registered name and keyword arguments for inputs like ``tensors``."""

    def drop(self, data: ModalityData, names: Sequence[str], file: str) -> ModalityData:
        """The modality without the named features (``site.json``'s ``drop``)."""
        raise SiteDataError(file, f"field 'modalities.{data.name}.drop' applies to tables only")

    def feature_table(self, data: ModalityData) -> pd.DataFrame | None:
        """One row per patient, one column per feature, as stored (scanned for identifier-like
        columns and rare values); None when the kind has no such table."""
        return None

    def prediction_warnings(self, data: ModalityData, fitted: Mapping[str, Any]) -> list[str]:
        """What a user predicting on ``data`` with a preprocessor fitted as ``fitted`` should be
        told (features the model never saw, ...); raise :class:`SiteDataError` when nothing usable
        is left."""
        return []

    def synthesize(
        self, spec: SyntheticModality, z: np.ndarray, ids: list[str], rng: np.random.Generator, source: str
    ) -> ModalityData:
        """Synthetic data of this kind for ``ids`` driven by their latent factors ``z`` (rows follow
        ``ids``): the synthetic cohort's generative model (``common.data.synthetic``)."""
        raise ValueError(f"modality kind {self.name!r} has no synthetic generator")

    def summary_features(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """A fixed-length summary (n, f) of each row's tensors, for the classical baselines."""
        raise ValueError(f"modality kind {self.name!r} has no summary features for the classical baselines")


class WideTableKind(ModalityKind):
    """Held as a wide ``table`` indexed by patient id, one row per patient."""

    def patient_ids(self, data: ModalityData) -> list[str]:
        assert data.table is not None
        return sorted(map(str, data.table.index))

    def subset(self, data: ModalityData, ids: set[str]) -> ModalityData:
        assert data.table is not None
        table = data.table.loc[[i for i in data.table.index if i in ids]]
        return ModalityData(data.name, data.kind, data.source, table=table)


class LongTableKind(ModalityKind):
    """Held as a long ``table`` with an ``id`` column, any number of rows per patient."""

    def patient_ids(self, data: ModalityData) -> list[str]:
        assert data.table is not None
        return sorted(map(str, data.table["id"].unique()))

    def subset(self, data: ModalityData, ids: set[str]) -> ModalityData:
        assert data.table is not None
        return ModalityData(data.name, data.kind, data.source, table=data.table[data.table["id"].isin(ids)])


class ArrayKind(ModalityKind):
    """Held as ``arrays``: patient id -> one array."""

    def patient_ids(self, data: ModalityData) -> list[str]:
        assert data.arrays is not None
        return sorted(data.arrays)

    def subset(self, data: ModalityData, ids: set[str]) -> ModalityData:
        assert data.arrays is not None
        arrays = {k: v for k, v in data.arrays.items() if k in ids}
        return ModalityData(data.name, data.kind, data.source, arrays=arrays)
