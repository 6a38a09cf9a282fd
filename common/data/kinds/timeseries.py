"""``timeseries``: irregular visits, a long table ``id, time, variable, value``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..dataset import ModalityData
from ..errors import SiteDataError
from ..formats import TIMESERIES_COLUMNS, read_timeseries
from ..preprocess import TimeSeriesPreprocessor
from ..schema import TimeseriesSpec
from .base import LongTableKind
from .registry import register_kind

if TYPE_CHECKING:
    from ..synthetic import SyntheticModality

DAYS_PER_SYNTHETIC_YEAR = 365.0


class TimeSeriesKind(LongTableKind):
    """A long CSV/Parquet table; its encoder receives ``values`` and ``observed`` (n, T, V),
    ``times`` (n, T) in years and ``mask`` (n, T). Reference encoder: ``irregular-time-series``."""

    name = "timeseries"
    suffix = ".csv"
    preprocessor = TimeSeriesPreprocessor
    inputs: ClassVar[Mapping[str, str]] = {
        "values": "(n, T, V) float32",
        "observed": "(n, T, V) float32, 1 where measured",
        "times": "(n, T) float32, years",
        "mask": "(n, T) float32, 1 for real visits",
    }
    schema_spec = TimeseriesSpec

    def read(self, path: Path, name: str) -> ModalityData:
        return read_timeseries(path, name)

    def write(self, data: ModalityData, path: Path) -> None:
        assert data.table is not None
        data.table.loc[:, list(TIMESERIES_COLUMNS)].to_csv(path, index=False)

    def drop(self, data: ModalityData, names: Sequence[str], file: str) -> ModalityData:
        assert data.table is not None
        unknown = sorted(set(names) - set(data.table["variable"]))
        if unknown:
            raise SiteDataError(file, f"field 'modalities.{data.name}.drop' names {unknown}, not in the variable")
        table = data.table[~data.table["variable"].isin(list(names))].reset_index(drop=True)
        return ModalityData(data.name, data.kind, data.source, table=table)

    def reference_encoder(self, tensors: Mapping[str, torch.Tensor], width: int, dropout: float) -> tuple[str, dict]:
        return "irregular-time-series", {"n_variables": tensors["values"].shape[-1], "width": width, "dropout": dropout}

    def prediction_warnings(self, data: ModalityData, fitted: Mapping[str, Any]) -> list[str]:
        """Variables the model was trained on that never appear (treated as unobserved); none of
        them present is an error."""
        assert data.table is not None
        seen = set(data.table["variable"].unique())
        missing = [v for v in fitted["variables"] if v not in seen]
        if len(missing) == len(fitted["variables"]):
            raise SiteDataError(
                data.source, f"none of the variables the model was trained on is present ({missing})", "variable"
            )
        unused = "variables the model was trained on never appear (treated as unobserved)"
        return [f"{data.source}: {unused}: {missing}"] if missing else []

    def synthesize(
        self, spec: SyntheticModality, z: np.ndarray, ids: list[str], rng: np.random.Generator, source: str
    ) -> ModalityData:
        """1 to ``max_visits`` irregular visits in the first year; ``n_features`` variables whose
        level and slope depend on ``z``, each measured with probability ``observed``."""
        n_vars = spec.n_features
        level_w = rng.normal(size=(n_vars, z.shape[1]))
        slope_w = rng.normal(size=(n_vars, z.shape[1]))
        counts = rng.integers(1, spec.max_visits + 1, size=len(ids))
        patient = np.repeat(np.arange(len(ids)), counts)
        times = rng.uniform(0.0, DAYS_PER_SYNTHETIC_YEAR, size=len(patient))
        level = np.tanh(z @ level_w.T)[patient]  # (visits, variables)
        slope = (z @ slope_w.T)[patient]
        values = level + slope * times[:, None] / DAYS_PER_SYNTHETIC_YEAR
        values = values + rng.normal(scale=0.3, size=values.shape)
        table = pd.DataFrame(
            {
                "id": np.repeat(np.asarray(ids, dtype=object)[patient], n_vars),
                "time": np.repeat(times, n_vars),
                "variable": np.tile([f"{spec.name}_v{j}" for j in range(n_vars)], len(patient)),
                "value": values.reshape(-1),
            }
        )
        if spec.observed < 1.0:
            measured = rng.random(values.shape) < spec.observed
            measured[np.arange(len(patient)), rng.integers(n_vars, size=len(patient))] = True
            table = table[measured.reshape(-1)]
        table = table.sort_values(["id", "time", "variable"]).reset_index(drop=True)
        return ModalityData(spec.name, self.name, source, table=table)

    def summary_features(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per variable its mean and last observed value, and the log number of visits."""
        values, observed = tensors["values"], tensors["observed"]
        count = observed.sum(dim=1)
        mean = (values * observed).sum(dim=1) / count.clamp_min(1.0)
        order = observed * torch.arange(1, values.shape[1] + 1, dtype=values.dtype)[None, :, None]
        last = values.gather(1, order.argmax(dim=1, keepdim=True)).squeeze(1) * (count > 0)
        visits = torch.log1p(tensors["mask"].sum(dim=1, keepdim=True))
        return torch.cat([mean, last, visits], dim=1)


register_kind(TimeSeriesKind)
