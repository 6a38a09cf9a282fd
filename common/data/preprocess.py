"""Preprocessors fitted on a site's training patients that turn ModalityData into tensors.

A preprocessor's whole state is a JSON-serialisable dict (``to_dict`` / ``preprocessor_from_dict``)
so that it can travel inside a model package between hospitals; nothing is pickled.

``transform(data, ids)`` returns ``(tensors, present)``: float32 tensors whose first dimension
follows ``ids`` (patients without this modality get zeros) and a bool array marking who has it.
Encoders are called as ``encoder(**tensors)``. Tensor keys per built-in kind (each kind names its
own in ``ModalityKind.inputs``; ``common.data.kinds``):

- ``tabular``: ``x`` (n, F)
- ``timeseries``: ``values`` (n, T, V), ``observed`` (n, T, V), ``times`` (n, T) in years,
  ``mask`` (n, T)
- ``image``: ``x`` (n, C, H, W)
- ``bags``: ``x`` (n, B, F), ``mask`` (n, B)

A ``mask`` (n, L) marks the valid positions (visits, instances) along dimension 1 of every tensor
of its modality; batches are cut after their last valid position (``tensors.cut_padding``).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from fedlego.common.disclosure import DisclosureError, below_threshold, round_significant

from .dataset import ModalityData
from .errors import SiteDataError
from .kinds import kind_names, known_kind, modality_kind, unknown_kind_message
from .pooling import by_name, pooled_moments, weighted_mean

Tensors = dict[str, torch.Tensor]
MIN_STD = 1e-12
DAYS_PER_YEAR = 365.25
DEFAULT_MAX_VISITS = 64
"""Visits a time series keeps per patient unless its preprocessing sets ``max_visits``."""


def _train_ids(data: ModalityData, train_ids: Sequence[str], min_cell: int = 1) -> list[str]:
    """The training patients that have this modality: an error if there are none, or fewer than
    ``min_cell`` (every statistic fitted on them would rest on too few patients to leave the site)."""
    have = set(data.patient_ids())
    ids = [i for i in dict.fromkeys(train_ids) if i in have]
    if not ids:
        raise SiteDataError(
            data.source,
            f"modality '{data.name}': none of the {len(train_ids)} training patients has data, "
            "so its preprocessor cannot be fitted",
        )
    if len(ids) < min_cell:
        raise DisclosureError(
            data.source, f"modality '{data.name}': {below_threshold('training patients hold it', min_cell)}"
        )
    return ids


def _std(values: np.ndarray | float) -> list[float]:
    """Standard deviations as floats, with (near) zero replaced by 1."""
    std = np.atleast_1d(np.asarray(values, dtype=float))
    return [float(s) if s > MIN_STD else 1.0 for s in std]


def _log_names(option: bool | Sequence[str], names: Sequence[str]) -> list[str]:
    """The names to log1p-transform: all for True, none for False, else those listed."""
    if isinstance(option, bool):
        return list(names) if option else []
    wanted = set(option)
    return [n for n in names if n in wanted]


def _float_matrix(frame: pd.DataFrame, log: Sequence[bool]) -> np.ndarray:
    """Columns as a float matrix (non-numbers, missing -> NaN), log1p-transforming ``log`` ones."""
    if not all(pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes):
        frame = frame.apply(pd.to_numeric, errors="coerce")
    x = frame.to_numpy(dtype=float, na_value=np.nan, copy=True)
    log = np.asarray(log, dtype=bool)
    x[:, log] = _log1p(x[:, log])
    return x


def _refuse_text_in_numbers(source: str, frame: pd.DataFrame) -> None:
    """A value that is not a number in a column fitted as numeric is an error naming the column
    and rows (never silently the training median); empty cells stay missing values."""
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column.dtype):
            continue
        bad = column.notna() & pd.to_numeric(column, errors="coerce").isna()
        if bad.any():
            shown = ", ".join(repr(v) for v in column[bad].unique()[:3])
            raise SiteDataError(
                source,
                f"not a number in a numeric column ({shown}; the preprocessor was fitted on numbers)",
                name,
                rows=list(column.index[bad]),
            )


FEW_LEVELS = 10
"""A numeric column with at most this many distinct training values is a coded variable (a flag, a
grade, a count): disclosure control treats each value like a category."""


def _without_rare_levels(values: pd.Series, min_cell: int) -> pd.Series:
    """``values`` with the values held by fewer than ``min_cell`` patients set missing, in a column
    of at most ``FEW_LEVELS`` distinct values (other columns unchanged)."""
    counts = values.value_counts()
    if min_cell <= 1 or len(counts) > FEW_LEVELS:
        return values
    return values.where(~values.isin(counts.index[counts < min_cell]))


def _log1p(values: np.ndarray) -> np.ndarray:
    return np.log1p(np.clip(values, 0.0, None))


class Preprocessor(ABC):
    """Base class: ``state`` = ``{"kind", "options", "fit"}``, ``fit`` None until fitted."""

    kind: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        self.state: dict[str, Any] = {"kind": self.kind, "options": options, "fit": None}

    @abstractmethod
    def fit(self, data: ModalityData, train_ids: Sequence[str], min_cell: int = 1) -> Preprocessor:
        """Learn the transformation from the training patients' data only; every statistic kept
        rests on at least ``min_cell`` of them (``common.disclosure``)."""

    @abstractmethod
    def transform(self, data: ModalityData, ids: Sequence[str]) -> tuple[Tensors, np.ndarray]:
        """Tensors for ``ids`` (in that order) and a bool array marking who has this modality."""

    @abstractmethod
    def describe(self) -> dict[str, list[int | None]]:
        """Per-patient shape of each tensor (None for dimensions that vary between batches)."""

    @classmethod
    def fit_problem(cls, fit: dict[str, Any]) -> str | None:
        """Why a fitted state breaks this kind's typed schema (field types, matching lengths,
        positive spreads), or None. Checked before a state from another party is used."""
        return None

    @classmethod
    def pool(cls, fits: list[dict[str, Any]], weights: list[float], options: dict[str, Any]) -> dict[str, Any] | None:
        """One fitted state from several sites' fitted states of this kind (``fits``, each valid,
        fitted with ``options``), each site weighed by its training patients; None when they
        cannot be pooled. The default: None (a kind without a pooling rule keeps the start site's
        preprocessing)."""
        return None

    def withhold(self, data: ModalityData, train_ids: Sequence[str], min_cell: int) -> ModalityData:
        """``data`` as a site may train on it with this state, its own or another party's: what the
        site's disclosure control would not use (a value, category, column or variable held by
        fewer than ``min_cell`` of its training patients ``train_ids``) is missing, so that no
        weight is learned from a handful of its patients. The default: ``data`` unchanged (a kind
        whose fit keeps everything once the modality itself passes the threshold)."""
        return data

    @property
    def fitted(self) -> dict[str, Any]:
        """The fitted part of the state (raises if not fitted yet)."""
        if self.state["fit"] is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        return self.state["fit"]

    def to_dict(self) -> dict[str, Any]:
        """The whole state as a JSON-serialisable dict."""
        _ = self.fitted
        return copy.deepcopy(self.state)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Preprocessor:
        """A fitted preprocessor from ``to_dict()`` output."""
        if state.get("kind") != cls.kind:
            raise ValueError(f"state of kind {state.get('kind')!r} given to {cls.__name__}")
        preprocessor = cls(**state["options"])
        preprocessor.state = copy.deepcopy(state)
        return preprocessor


class TabularPreprocessor(Preprocessor):
    """Numeric columns: optional log1p (negatives clipped to 0), median imputation, standardisation.
    Categorical columns: one-hot over the ``max_categories`` most frequent training categories
    (unknown or missing -> all zeros). ``log_transform`` is a bool or a list of column names.
    ``x`` holds the numeric columns first, then the one-hot blocks, in the fitted column order."""

    kind = "tabular"

    @classmethod
    def fit_problem(cls, fit: dict[str, Any]) -> str | None:
        return _tabular_fit_problem(fit)

    @classmethod
    def pool(cls, fits: list[dict[str, Any]], weights: list[float], options: dict[str, Any]) -> dict[str, Any] | None:
        """Numeric columns: every site's, pooled means and spreads (a site without a column does
        not count towards it), medians averaged with the same weights. Categories: every category
        some site kept (held by min-cell of its patients), most widely held first, at most
        ``max_categories``. None if a column is numeric at one site and categorical at another, or
        log-transformed at one only."""
        numeric = [fit["numeric"] for fit in fits]
        names = list(dict.fromkeys(name for part in numeric for name in part["names"]))
        logged: dict[str, bool] = {}
        for part in numeric:
            for name, log in zip(part["names"], part["log"], strict=True):
                if logged.setdefault(name, log) != log:
                    return None
        categorical = _pooled_categories(fits, weights, options["max_categories"])
        if {column["name"] for column in categorical} & set(names):
            return None

        def laid_out(key: str) -> list[list[float | None]]:
            return by_name([part["names"] for part in numeric], [part[key] for part in numeric], names)

        mean, std = pooled_moments(laid_out("mean"), laid_out("std"), weights)
        pooled = {"names": names, "log": [logged[name] for name in names]}
        pooled |= {"median": weighted_mean(laid_out("median"), weights), "mean": mean, "std": _std(std)}
        return {"numeric": pooled, "categorical": categorical}

    def __init__(self, log_transform: bool | Sequence[str] = False, max_categories: int = 20):
        log = log_transform if isinstance(log_transform, bool) else list(log_transform)
        super().__init__(log_transform=log, max_categories=max_categories)

    def fit(self, data: ModalityData, train_ids: Sequence[str], min_cell: int = 1) -> TabularPreprocessor:
        """Numeric columns observed in fewer than ``min_cell`` training patients are left out (their
        median, mean and spread would describe a handful of patients); in a numeric column of few
        distinct values (a 0/1 flag, a grade) a value held by fewer than ``min_cell`` patients counts
        as missing (its mean and spread would give that count away); medians are rounded to two
        significant digits; categories held by fewer than ``min_cell`` training patients fold into
        'other' (all zeros, like unseen ones)."""
        assert data.table is not None
        table = data.table.loc[_train_ids(data, train_ids, min_cell)]
        options = self.state["options"]
        numeric = [c for c, dtype in table.dtypes.items() if pd.api.types.is_numeric_dtype(dtype)]
        levels = {c: _without_rare_levels(table[c], min_cell) for c in numeric}
        names = [c for c in numeric if levels[c].notna().sum() >= min_cell]
        logged = set(_log_names(options["log_transform"], names))
        log = [name in logged for name in names]
        x = _float_matrix(pd.DataFrame({c: levels[c] for c in names}, index=table.index, columns=names), log)
        with warnings.catch_warnings():  # all-missing columns get median 0
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nan_to_num(np.nanmedian(x, axis=0), nan=0.0)
        if min_cell > 1:  # an odd count's median is one patient's exact value
            median = np.array([round_significant(float(m)) for m in median])
        x = np.where(np.isnan(x), median, x)
        categorical = []
        for name in table.columns.difference(numeric, sort=False):
            counts = table[name].dropna().map(str).value_counts()
            ranked = sorted(((c, n) for c, n in counts.items() if n >= min_cell), key=lambda item: (-item[1], item[0]))
            categories = [c for c, _ in ranked[: options["max_categories"]]]
            categorical.append({"name": name, "categories": categories})
        if not names and not any(c["categories"] for c in categorical):
            raise DisclosureError(
                data.source,
                f"modality '{data.name}': no column is held by at least min-cell = {min_cell} training patients: "
                "nothing to train on (disclosure control)",
            )
        numeric = {"names": names, "log": log, "median": median.tolist()}
        numeric |= {"mean": x.mean(axis=0).tolist(), "std": _std(x.std(axis=0))}
        self.state["fit"] = {"numeric": numeric, "categorical": categorical}
        return self

    def withhold(self, data: ModalityData, train_ids: Sequence[str], min_cell: int) -> ModalityData:
        """The fit's rules on the site's training patients: in a numeric column of few distinct
        values a value held by fewer than ``min_cell`` of them is missing; a numeric column then
        observed in fewer is missing throughout; a category held by fewer is missing (all zeros,
        like 'other'). Missing numbers take the state's median. Text in a numeric column is the
        data error ``transform`` raises, raised here too."""
        assert data.table is not None
        if min_cell <= 1:
            return data
        table = data.table.copy()
        numeric = [name for name in self.fitted["numeric"]["names"] if name in table.columns]
        _refuse_text_in_numbers(data.source, table[numeric])
        training = table.loc[table.index.intersection(list(train_ids))]
        for name in numeric:
            counts = training[name].value_counts()
            if len(counts) <= FEW_LEVELS:
                table[name] = table[name].where(table[name].isin(counts.index[counts >= min_cell]))
            if table.loc[training.index, name].notna().sum() < min_cell:
                table[name] = np.nan
        for column in self.fitted["categorical"]:
            name = column["name"]
            if name in table.columns:
                counts = training[name].dropna().map(str).value_counts()
                text = table[name].map(str, na_action="ignore")
                table[name] = table[name].where(text.isin(counts.index[counts >= min_cell]))
        return ModalityData(data.name, data.kind, data.source, table=table)

    @property
    def feature_dim(self) -> int:
        """Width F of ``x``."""
        fit = self.fitted
        return len(fit["numeric"]["names"]) + sum(len(c["categories"]) for c in fit["categorical"])

    def describe(self) -> dict[str, list[int | None]]:
        return {"x": [self.feature_dim]}

    def transform(self, data: ModalityData, ids: Sequence[str]) -> tuple[Tensors, np.ndarray]:
        assert data.table is not None
        numeric, categorical = self.fitted["numeric"], self.fitted["categorical"]
        needed = numeric["names"] + [c["name"] for c in categorical]
        missing = [name for name in needed if name not in data.table.columns]
        if missing:
            message = "column missing (the preprocessor was fitted with it)"
            raise SiteDataError(data.source, message, ", ".join(missing))
        present = pd.Index(list(ids), dtype=object).isin(data.table.index)
        rows = data.table.reindex(list(ids))
        _refuse_text_in_numbers(data.source, rows[numeric["names"]])
        x = _float_matrix(rows[numeric["names"]], numeric["log"])
        x = np.where(np.isnan(x), np.array(numeric["median"]), x)
        blocks = [(x - np.array(numeric["mean"])) / np.array(numeric["std"])]
        for column in categorical:
            text = rows[column["name"]].map(str, na_action="ignore").to_numpy(dtype=object)
            categories = np.array(column["categories"], dtype=object)
            blocks.append(text[:, None] == categories[None, :])
        x = np.concatenate(blocks, axis=1).astype(np.float32)
        x[~present] = 0.0
        return {"x": torch.from_numpy(x)}, present


class TimeSeriesPreprocessor(Preprocessor):
    """One row per distinct visit time of a patient (sorted), one column per training variable
    (sorted names); values optionally log1p-transformed (bool or list of variables) then
    standardised with training statistics. Repeated measurements at one time are averaged;
    variables unseen in training are ignored, and patients with no remaining observation are
    absent. A patient's series keeps its ``max_visits`` most recent visits (the ones nearest the
    prediction time), so that one patient with thousands of measurements neither pads every
    patient's tensors to that length nor dominates the compute."""

    kind = "timeseries"

    @classmethod
    def fit_problem(cls, fit: dict[str, Any]) -> str | None:
        return _timeseries_fit_problem(fit)

    @classmethod
    def pool(cls, fits: list[dict[str, Any]], weights: list[float], options: dict[str, Any]) -> dict[str, Any] | None:
        """Every site's variables, with pooled means and spreads (weighed by patients: a site's
        number of measurements does not travel)."""
        variables = sorted({name for fit in fits for name in fit["variables"]})

        def laid_out(key: str) -> list[list[float | None]]:
            return by_name([fit["variables"] for fit in fits], [fit[key] for fit in fits], variables)

        mean, std = pooled_moments(laid_out("mean"), laid_out("std"), weights)
        logged = sorted({name for fit in fits for name in fit["log"]})
        return {"variables": variables, "log": logged, "mean": mean, "std": _std(std)}

    def __init__(self, log_transform: bool | Sequence[str] = False, max_visits: int = DEFAULT_MAX_VISITS):
        log = log_transform if isinstance(log_transform, bool) else list(log_transform)
        if isinstance(max_visits, bool) or not isinstance(max_visits, int) or max_visits < 1:
            raise ValueError(f"max_visits must be a positive integer, got {max_visits!r}")
        super().__init__(log_transform=log, max_visits=max_visits)

    def fit(self, data: ModalityData, train_ids: Sequence[str], min_cell: int = 1) -> TimeSeriesPreprocessor:
        """Variables measured in fewer than ``min_cell`` training patients are left out."""
        assert data.table is not None
        table = self._most_recent(data.table[data.table["id"].isin(_train_ids(data, train_ids, min_cell))])
        patients = table.groupby("variable")["id"].nunique()
        table = table[table["variable"].isin(patients.index[patients >= min_cell])]
        if table.empty:
            raise DisclosureError(
                data.source,
                f"modality '{data.name}': no variable is measured in at least min-cell = {min_cell} training "
                "patients: nothing to train on (disclosure control)",
            )
        variables = sorted(table["variable"].unique())
        logged = _log_names(self.state["options"]["log_transform"], variables)
        values = table["value"].to_numpy(dtype=float)
        values = np.where(table["variable"].isin(logged), _log1p(values), values)
        grouped = pd.Series(values, index=table.index).groupby(table["variable"])
        self.state["fit"] = {
            "variables": variables,
            "log": logged,
            "mean": [float(grouped.mean()[v]) for v in variables],
            "std": _std(grouped.std(ddof=0).reindex(variables).to_numpy()),
        }
        return self

    def withhold(self, data: ModalityData, train_ids: Sequence[str], min_cell: int) -> ModalityData:
        """Measurements of variables measured in fewer than ``min_cell`` training patients (among
        the visits kept, as the fit counts them) are dropped."""
        assert data.table is not None
        if min_cell <= 1:
            return data
        table = data.table
        training = self._most_recent(table[table["id"].isin(set(train_ids))])
        counts = training.groupby("variable")["id"].nunique()
        kept = table[table["variable"].isin(counts.index[counts >= min_cell])]
        return ModalityData(data.name, data.kind, data.source, table=kept)

    @property
    def feature_dim(self) -> int:
        """Number V of variables."""
        return len(self.fitted["variables"])

    def describe(self) -> dict[str, list[int | None]]:
        v = self.feature_dim
        return {"values": [None, v], "observed": [None, v], "times": [None], "mask": [None]}

    def transform(self, data: ModalityData, ids: Sequence[str]) -> tuple[Tensors, np.ndarray]:
        assert data.table is not None
        fit = self.fitted
        column = {v: k for k, v in enumerate(fit["variables"])}
        table = data.table
        table = table[table["id"].isin(list(ids)) & table["variable"].isin(list(column))]
        obs = self._most_recent(table.groupby(["id", "time", "variable"], as_index=False)["value"].mean())
        patients = sorted(obs["id"].unique())
        row = {p: k for k, p in enumerate(patients)}
        p = obs["id"].map(row).to_numpy(dtype=int)
        t = obs.groupby("id")["time"].rank(method="dense").to_numpy(dtype=int) - 1
        v = obs["variable"].map(column).to_numpy(dtype=int)
        values = obs["value"].to_numpy(dtype=float)
        values = np.where(obs["variable"].isin(fit["log"]), _log1p(values), values)
        values = (values - np.array(fit["mean"])[v]) / np.array(fit["std"])[v]

        n_visits = int(t.max()) + 1 if len(t) else 1
        shape = (len(patients), n_visits, len(column))
        out = {"values": np.zeros(shape), "observed": np.zeros(shape)}
        out["values"][p, t, v] = values
        out["observed"][p, t, v] = 1.0
        out["times"] = np.zeros(shape[:2])
        out["times"][p, t] = obs["time"].to_numpy(dtype=float) / DAYS_PER_YEAR
        out["mask"] = np.zeros(shape[:2])
        out["mask"][p, t] = 1.0

        index = np.array([row.get(i, -1) for i in ids], dtype=int)
        present = index >= 0
        tensors = {}
        for key, array in out.items():
            result = np.zeros((len(ids), *array.shape[1:]), dtype=np.float32)
            result[present] = array[index[present]]
            tensors[key] = torch.from_numpy(result)
        return tensors, present

    def _most_recent(self, obs: pd.DataFrame) -> pd.DataFrame:
        """Observations of each patient's ``max_visits`` latest distinct times (packages made
        before the option existed keep every visit)."""
        limit = self.state["options"].get("max_visits")
        if limit is None:
            return obs
        from_last = obs.groupby("id")["time"].rank(method="dense", ascending=False)
        return obs[from_last.to_numpy() <= limit]


def _chw_shape(image: np.ndarray) -> tuple[int, ...]:
    """The (C, H, W) shape of an (H, W) or (H, W, C) image."""
    return (1, *image.shape) if image.ndim == 2 else (image.shape[2], *image.shape[:2])


def _image_chw(image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W) or (H, W, C) image as float (C, H, W) in [0, 1]."""
    x = image.astype(np.float32) / 255.0
    return x[None] if x.ndim == 2 else x.transpose(2, 0, 1)


class ImagePreprocessor(Preprocessor):
    """Scale uint8 pixels to [0, 1], then standardise each channel with training statistics.
    Every image must have the (C, H, W) shape seen at fit time."""

    kind = "image"

    @classmethod
    def fit_problem(cls, fit: dict[str, Any]) -> str | None:
        return _image_fit_problem(fit)

    @classmethod
    def pool(cls, fits: list[dict[str, Any]], weights: list[float], options: dict[str, Any]) -> dict[str, Any] | None:
        """Pooled channel means and spreads (exact: every image has the same number of pixels);
        None if the sites' images differ in shape."""
        if len({tuple(fit["shape"]) for fit in fits}) != 1:
            return None
        mean, std = pooled_moments([fit["mean"] for fit in fits], [fit["std"] for fit in fits], weights)
        return {"shape": list(fits[0]["shape"]), "mean": mean, "std": _std(std)}

    def _checked(self, data: ModalityData, ids: Sequence[str], shape: tuple[int, ...]) -> None:
        assert data.arrays is not None
        odd = [i for i in ids if i in data.arrays and _chw_shape(data.arrays[i]) != shape]
        if odd:
            raise SiteDataError(data.source, f"images differ from the (C, H, W) shape {shape}", rows=odd)

    def fit(self, data: ModalityData, train_ids: Sequence[str], min_cell: int = 1) -> ImagePreprocessor:
        assert data.arrays is not None
        ids = _train_ids(data, train_ids, min_cell)
        shape = _chw_shape(data.arrays[ids[0]])
        self._checked(data, ids, shape)
        total, squares = np.zeros(shape[0]), np.zeros(shape[0])
        for i in ids:
            x = _image_chw(data.arrays[i]).astype(float)
            total += x.sum(axis=(1, 2))
            squares += (x**2).sum(axis=(1, 2))
        count = len(ids) * shape[1] * shape[2]
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        self.state["fit"] = {"shape": list(shape), "mean": mean.tolist(), "std": _std(std)}
        return self

    def describe(self) -> dict[str, list[int | None]]:
        return {"x": list(self.fitted["shape"])}

    def transform(self, data: ModalityData, ids: Sequence[str]) -> tuple[Tensors, np.ndarray]:
        assert data.arrays is not None
        fit = self.fitted
        shape = tuple(fit["shape"])
        self._checked(data, ids, shape)
        mean = np.array(fit["mean"], dtype=np.float32)[:, None, None]
        std = np.array(fit["std"], dtype=np.float32)[:, None, None]
        present = np.array([i in data.arrays for i in ids], dtype=bool)
        x = np.zeros((len(ids), *shape), dtype=np.float32)
        for k, i in enumerate(ids):
            if present[k]:
                x[k] = (_image_chw(data.arrays[i]) - mean) / std
        return {"x": torch.from_numpy(x)}, present


class BagPreprocessor(Preprocessor):
    """Standardise each instance feature with training statistics; pad bags to the largest
    requested bag B (``mask`` marks real instances)."""

    kind = "bags"

    @classmethod
    def fit_problem(cls, fit: dict[str, Any]) -> str | None:
        return _bags_fit_problem(fit)

    @classmethod
    def pool(cls, fits: list[dict[str, Any]], weights: list[float], options: dict[str, Any]) -> dict[str, Any] | None:
        """Pooled feature means and spreads (weighed by patients: a site's number of instances
        does not travel); None if the sites' instances differ in width."""
        if len({len(fit["mean"]) for fit in fits}) != 1:
            return None
        mean, std = pooled_moments([fit["mean"] for fit in fits], [fit["std"] for fit in fits], weights)
        return {"mean": mean, "std": _std(std)}

    def _checked(self, data: ModalityData, ids: Sequence[str], width: int) -> None:
        assert data.arrays is not None
        odd = [i for i in ids if i in data.arrays and data.arrays[i].shape[1] != width]
        if odd:
            raise SiteDataError(data.source, f"bags differ from the feature count {width}", rows=odd)

    def fit(self, data: ModalityData, train_ids: Sequence[str], min_cell: int = 1) -> BagPreprocessor:
        assert data.arrays is not None
        ids = _train_ids(data, train_ids, min_cell)
        width = data.arrays[ids[0]].shape[1]
        self._checked(data, ids, width)
        total, squares, count = np.zeros(width), np.zeros(width), 0
        for i in ids:
            x = data.arrays[i].astype(float)
            total += x.sum(axis=0)
            squares += (x**2).sum(axis=0)
            count += len(x)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        self.state["fit"] = {"mean": mean.tolist(), "std": _std(std)}
        return self

    @property
    def feature_dim(self) -> int:
        """Number F of features per instance."""
        return len(self.fitted["mean"])

    def describe(self) -> dict[str, list[int | None]]:
        return {"x": [None, self.feature_dim], "mask": [None]}

    def transform(self, data: ModalityData, ids: Sequence[str]) -> tuple[Tensors, np.ndarray]:
        assert data.arrays is not None
        fit = self.fitted
        self._checked(data, ids, self.feature_dim)
        mean, std = np.array(fit["mean"]), np.array(fit["std"])
        present = np.array([i in data.arrays for i in ids], dtype=bool)
        largest = max((len(data.arrays[i]) for i in ids if i in data.arrays), default=1)
        x = np.zeros((len(ids), largest, self.feature_dim), dtype=np.float32)
        mask = np.zeros((len(ids), largest), dtype=np.float32)
        for k, i in enumerate(ids):
            if present[k]:
                bag = data.arrays[i]
                x[k, : len(bag)] = (bag - mean) / std
                mask[k, : len(bag)] = 1.0
        return {"x": torch.from_numpy(x), "mask": torch.from_numpy(mask)}, present


def _pooled_categories(fits: list[dict[str, Any]], weights: list[float], most: int) -> list[dict[str, Any]]:
    """Per categorical column (in order of first appearance), the categories the sites kept,
    ranked by the patients of the sites keeping them, then by first appearance; at most ``most``."""
    scores: dict[str, dict[str, float]] = {}
    for fit, weight in zip(fits, weights, strict=True):
        for column in fit["categorical"]:
            held = scores.setdefault(column["name"], {})
            for category in column["categories"]:
                held[category] = held.get(category, 0.0) + weight
    pooled = []
    for name, held in scores.items():
        first = {category: position for position, category in enumerate(held)}
        ranked = sorted(held, key=lambda category: (-held[category], first[category]))
        pooled.append({"name": name, "categories": ranked[:most]})
    return pooled


def pooled_state(states: Sequence[dict[str, Any]], weights: Sequence[float]) -> dict[str, Any] | None:
    """One fitted preprocessing state from several sites' valid fitted states of one modality, each
    weighed by its training patients (``weights``, positive), or None when they cannot be pooled:
    fewer than two, different kinds or options, a kind without a pooling rule
    (``Preprocessor.pool``), fits that do not fit together, or a result that breaks the kind's
    schema. Pools only what the states hold, so it discloses nothing they do not."""
    if len(states) < 2 or len(states) != len(weights) or min(weights) <= 0:
        return None
    kinds = {state["kind"] for state in states}
    options = {json.dumps(state["options"], sort_keys=True) for state in states}
    if len(kinds) != 1 or len(options) != 1:
        return None
    kind = kinds.pop()
    fits = [state["fit"] for state in states]
    fit = modality_kind(kind).preprocessor.pool(fits, list(weights), copy.deepcopy(states[0]["options"]))
    if fit is None:
        return None
    state = {"kind": kind, "options": copy.deepcopy(states[0]["options"]), "fit": fit}
    return state if state_problem(state) is None else None


def make_preprocessor(kind: str, **options: Any) -> Preprocessor:
    """An unfitted preprocessor for a modality kind (options as in its class); an option the class
    does not take is a ValueError naming it and the valid ones."""
    factory = modality_kind(kind).preprocessor
    valid = [name for name in inspect.signature(factory).parameters if name not in ("self", "args", "kwargs")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        hints = {name: difflib.get_close_matches(name, valid, n=1) for name in unknown}
        named = ", ".join(f"{n!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for n, h in hints.items())
        raise ValueError(
            f"unknown preprocessing option {named} for {kind} data; valid options: {', '.join(valid) or 'none'}"
        )
    return factory(**options)


MAX_STATE_LIST = 100_000
"""The longest list a preprocessing state may hold (columns, variables, statistics)."""
MAX_CATEGORIES = 1_000
"""The most categories of one categorical column a preprocessing state may hold."""


def _list_of(value: Any, path: str, item: type, length: int | None = None) -> str | None:
    """Why ``value`` is not a list of ``item`` (``float``: any number; of ``length`` items when
    given), or None. A boolean is only a ``bool``."""
    if not isinstance(value, list):
        return f"{path} must be a list"
    if length is not None and len(value) != length:
        return f"{path} holds {len(value)} items, {length} expected"
    accepted, name = ((int, float), "number") if item is float else (item, item.__name__)
    for index, element in enumerate(value):
        if (isinstance(element, bool) and item is not bool) or not isinstance(element, accepted):
            return f"{path}[{index}] must be a {name}"
    return None


def _statistics_problem(fit: dict[str, Any], path: str, length: int) -> str | None:
    """Why ``fit['mean']``/``fit['std']`` are not ``length`` numbers (std positive), or None."""
    for name in ("mean", "std"):
        problem = _list_of(fit.get(name), f"{path}.{name}", float, length)
        if problem:
            return problem
    if any(value <= 0 for value in fit["std"]):
        return f"{path}.std holds a value that is not positive"
    return None


def _tabular_fit_problem(fit: dict[str, Any]) -> str | None:
    numeric, categorical = fit.get("numeric"), fit.get("categorical")
    if not isinstance(numeric, dict) or not isinstance(categorical, list):
        return "fit needs a 'numeric' object and a 'categorical' list"
    problem = _list_of(numeric.get("names"), "fit.numeric.names", str)
    if problem:
        return problem
    count = len(numeric["names"])
    problem = _list_of(numeric.get("log"), "fit.numeric.log", bool, count) or _list_of(
        numeric.get("median"), "fit.numeric.median", float, count
    )
    if problem:
        return problem
    problem = _statistics_problem(numeric, "fit.numeric", count)
    if problem:
        return problem
    for index, column in enumerate(categorical):
        where = f"fit.categorical[{index}]"
        if not isinstance(column, dict) or not isinstance(column.get("name"), str):
            return f"{where} needs a text 'name'"
        problem = _list_of(column.get("categories"), f"{where}.categories", str)
        if problem:
            return problem
    return None


def _timeseries_fit_problem(fit: dict[str, Any]) -> str | None:
    problem = _list_of(fit.get("variables"), "fit.variables", str) or _list_of(fit.get("log"), "fit.log", str)
    return problem or _statistics_problem(fit, "fit", len(fit["variables"]))


def _image_fit_problem(fit: dict[str, Any]) -> str | None:
    shape = fit.get("shape")
    problem = _list_of(shape, "fit.shape", int, 3)
    if problem:
        return problem
    if not all(0 < side <= 65_536 for side in shape):
        return "fit.shape must hold three sizes in [1, 65536]"
    return _statistics_problem(fit, "fit", shape[0])


def _bags_fit_problem(fit: dict[str, Any]) -> str | None:
    return _list_of(fit.get("mean"), "fit.mean", float) or _statistics_problem(fit, "fit", len(fit["mean"]))


def state_problem(state: Any) -> str | None:
    """What makes a preprocessing state (as it travels in a package) unusable or hostile, or None:
    a kind without a preprocessor, a non-finite statistic, an over-long list, too many categories,
    a fitted state that breaks its kind's typed schema (``Preprocessor.fit_problem``: field types,
    matching lengths, positive spreads). Checked before any site applies the state to its patients."""
    if not isinstance(state, dict) or not known_kind(state.get("kind")):
        return f"the state must be an object with a kind in {list(kind_names())}"
    if not isinstance(state.get("options"), dict) or not isinstance(state.get("fit"), dict | None):
        return "the state needs an 'options' object and a 'fit' object"
    problem = _bounded_values_problem(state)
    if problem is None and state.get("fit") is not None:
        problem = modality_kind(state["kind"]).preprocessor.fit_problem(state["fit"])
    return problem


def _bounded_values_problem(state: dict[str, Any]) -> str | None:
    """A non-finite number, an over-long list, too many categories or a foreign type anywhere."""
    stack: list[tuple[str, Any]] = [("", state)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int | float):
            if not math.isfinite(value):
                return f"{path or 'state'} holds the non-finite number {value!r}"
        elif isinstance(value, list):
            if len(value) > MAX_STATE_LIST:
                return f"{path} holds {len(value):,} items, over the limit of {MAX_STATE_LIST:,}"
            stack += [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, dict):
            categories = value.get("categories")
            if isinstance(categories, list) and len(categories) > MAX_CATEGORIES:
                return f"{path}.categories holds {len(categories):,} categories, over the limit of {MAX_CATEGORIES:,}"
            stack += [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
        else:
            return f"{path} holds a value of type {type(value).__name__}"
    return None


def preprocessor_from_dict(state: dict[str, Any]) -> Preprocessor:
    """A fitted preprocessor from the dict made by ``to_dict()``."""
    kind = state.get("kind")
    if not known_kind(kind):
        raise ValueError(f"preprocessing state: {unknown_kind_message(kind)}")
    return modality_kind(kind).preprocessor.from_dict(state)
