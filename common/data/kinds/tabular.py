"""``tabular``: one row per patient, one column per feature (numeric or categorical)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..dataset import ModalityData
from ..errors import SiteDataError
from ..formats import read_tabular
from ..preprocess import TabularPreprocessor
from ..schema import TabularSpec
from .base import WideTableKind
from .registry import register_kind

if TYPE_CHECKING:
    from ..synthetic import SyntheticModality

SHOWN_CATEGORIES = 5
"""Unseen categories quoted per column in a prediction warning."""


class TabularKind(WideTableKind):
    """A wide CSV/Parquet table; its encoder receives ``x`` (n, F): standardised numeric columns,
    then one-hot categories. Reference encoder: ``snn``."""

    name = "tabular"
    suffix = ".csv"
    preprocessor = TabularPreprocessor
    inputs: ClassVar[Mapping[str, str]] = {"x": "(n, F) float32"}
    schema_spec = TabularSpec

    def read(self, path: Path, name: str) -> ModalityData:
        return read_tabular(path, name)

    def write(self, data: ModalityData, path: Path) -> None:
        assert data.table is not None
        data.table.to_csv(path, index_label="id")

    def drop(self, data: ModalityData, names: Sequence[str], file: str) -> ModalityData:
        assert data.table is not None
        unknown = sorted(set(names) - set(data.table.columns))
        if unknown:
            raise SiteDataError(file, f"field 'modalities.{data.name}.drop' names {unknown}, not in the columns")
        table = data.table.drop(columns=list(names))
        if table.shape[1] == 0:
            raise SiteDataError(file, f"field 'modalities.{data.name}.drop' drops every feature column")
        return ModalityData(data.name, data.kind, data.source, table=table)

    def feature_table(self, data: ModalityData) -> pd.DataFrame | None:
        return data.table

    def reference_encoder(self, tensors: Mapping[str, torch.Tensor], width: int, dropout: float) -> tuple[str, dict]:
        return "snn", {"in_features": tensors["x"].shape[-1], "width": width, "dropout": dropout}

    def prediction_warnings(self, data: ModalityData, fitted: Mapping[str, Any]) -> list[str]:
        """One warning per categorical column holding values outside the model's categories
        (they are encoded as none of them, like the rare categories cut at training)."""
        assert data.table is not None
        warnings = []
        for column in fitted.get("categorical", []):
            if column["name"] not in data.table.columns:
                continue  # the transform names missing columns
            values = data.table[column["name"]].dropna().map(str)
            unseen = values[~values.isin(column["categories"])]
            if len(unseen):
                shown = sorted(unseen.unique())[:SHOWN_CATEGORIES]
                more = ", ..." if unseen.nunique() > SHOWN_CATEGORIES else ""
                warnings.append(
                    f"{data.source}: column {column['name']!r}: {len(unseen)} patients hold values the model has no "
                    f"category for ({', '.join(map(repr, shown))}{more}): encoded as none of its categories"
                )
        return warnings

    def synthesize(
        self, spec: SyntheticModality, z: np.ndarray, ids: list[str], rng: np.random.Generator, source: str
    ) -> ModalityData:
        """``n_features`` columns ``A z + 0.5 tanh(B z) + noise``."""
        a = rng.normal(size=(spec.n_features, z.shape[1]))
        b = rng.normal(size=(spec.n_features, z.shape[1]))
        values = z @ a.T + 0.5 * np.tanh(z @ b.T) + rng.normal(scale=0.5, size=(len(ids), a.shape[0]))
        columns = [f"{spec.name}_{j}" for j in range(spec.n_features)]
        table = pd.DataFrame(values, index=pd.Index(ids, name="id"), columns=columns)
        return ModalityData(spec.name, self.name, source, table=table)

    def summary_features(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return tensors["x"]


register_kind(TabularKind)
