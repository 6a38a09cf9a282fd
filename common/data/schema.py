"""The consortium's data contract: what every site's folder must hold, agreed before any training.

The coordinator derives a :class:`ConsortiumSchema` from one reference site folder
(:func:`schema_from_site`, ``fedlego schema``), edits it if needed (units, say), and sends the JSON
file to every hospital; each hospital checks its own folder against it (:func:`check_against_schema`,
``fedlego check --schema``) and sees every problem at once. :func:`schema_hash` names the exact
contract a run used.

The schema reveals no patient: ranges are rounded *outward* to 1 (times) or 2 (values) significant
digits, strictly beyond the observed extremes, so no patient's exact value is stored (zero, a
natural bound, stays zero); categories and time-series variables held by fewer than ``min_cell``
patients at the reference site are left out. Problem messages hold counts, never patient values or
ids; a category or variable name not in the schema is named only when at least ``min_cell``
patients hold it at the checking site.

JSON format (``version`` 1)::

    {"version": 1, "task": "survival", "min_cell": 10,
     "labels": {"time_unit": "days", "time_range": [0.9, 4000],   # classification: {"classes": [0, 1]}
                "outcome": "death from any cause"},                  # optional, shown in every report
     "modalities": {
       "clinical": {"kind": "tabular", "columns": {
           "age": {"type": "numeric", "unit": "years", "range": [29, 87]},
           "sex": {"type": "categorical", "unit": "", "categories": ["F", "M"]}}},
       "labs": {"kind": "timeseries", "time_range": [-10, 400],
                "variables": {"crp": {"unit": "mg/L", "range": [0.1, 250]}}},
       "xray": {"kind": "image", "shape": [1, 64, 64]},
       "wsi": {"kind": "bags", "features": 768}}}

A numeric column's or variable's ``range`` is null when fewer than ``min_cell`` patients hold a
value; a time series' ``time_range`` is null when no variable is kept.

Checks (:func:`check_against_schema`). Tabular columns are validated with pandera
(``DataFrameSchema(strict=True)``, ``lazy=True``): a missing column (naming the file's columns not
in the schema, a likely renaming), an extra column, numeric vs categorical type, values outside the
range, categories outside the list; its ``failure_cases`` are reduced to counts. Plain pandas does
the rest, where pandera's one-row-per-patient column model does not fit: survival labels and
classes, long-format time series (per-variable ranges, unknown or absent variables), image shapes,
bag widths, the "another unit" test, and the patients per category behind each message.

Severity: a site's modality the schema does not list (a site holding only some of the schema's
modalities is the normal case), another modality kind or task, a missing or extra column,
a type mismatch, a category held by ``min_cell`` or more patients here that is not in the list, a
time-series variable observed in ``min_cell`` or more patients here that is not in the schema, an
image shape or bag width that differs, and values that look like another unit are *errors*.
Values slightly outside a range (it comes from one site), rare categories or variables not in the
schema (the preprocessor folds them into 'other' anyway, like the reference site's own rare ones)
and schema variables never observed here are *warnings*.

Another unit: survival times whose maximum is 10x or more above (or below) the schema's upper
bound; a numeric column's or variable's values whose median lies outside the range by a factor of
5 or more. The factor is estimated from the site's maximum and the interval the schema's rounded
upper bound came from, and named when within 25% of a known one (days/weeks 7, days/months 30.4,
days/years 365.25, months/years 12, weeks/months 4.35; also hours and minutes for time-series
times; 10, 18, 88.4, 100, 1000, 10**6 for values).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa

from fedlego.common.disclosure import DEFAULT_MIN_CELL
from fedlego.common.time_units import DAYS_PER_UNIT, TIME_UNITS

from .dataset import TASK_KINDS, Labels, ModalityData
from .errors import SiteDataError
from .kinds import kind_names, modality_kind

if TYPE_CHECKING:
    from .sitefolder import SiteData

SCHEMA_VERSION = 1
"""Version of the JSON format this module reads and writes."""
TIME_DIGITS = 1
"""Significant digits of time ranges (survival times, time-series times)."""
VALUE_DIGITS = 2
"""Significant digits of value ranges (numeric columns, time-series variables)."""
SURVIVAL_UNIT_FACTOR = 10.0
"""Survival times whose maximum is this many times above or below the schema's look like another unit."""
VALUE_UNIT_FACTOR = 5.0
"""Values whose median lies outside the range by this factor look like another unit."""
OUTSIDE_WARNING_SHARE = 0.1
"""Values outside a range are a warning only when more than this share of a site's values are,
besides the 2 (min-cell - 1) that a schema's range leaves out at the reference site's two ends."""
FACTOR_TOLERANCE = 0.25
"""A ratio names a known unit factor when within this fraction of it."""
HINT_FACTOR = 3.0
"""Below the error thresholds, a ratio at least this far from 1 that names a known factor is hinted at."""
TIME_FACTORS: dict[float, str] = {
    DAYS_PER_UNIT[large] / DAYS_PER_UNIT[small]: f"{large} vs {small}" for small, large in combinations(TIME_UNITS, 2)
}
"""Ratio between two time units -> the pair it suggests (``"months vs days"`` for 30.4)."""
CLOCK_FACTORS: dict[float, str] = {
    **TIME_FACTORS,
    24.0: "hours vs days",
    60.0: "minutes vs hours",
    168.0: "hours vs weeks",
    1440.0: "minutes vs days",
}
"""Time-series times may also be in hours or minutes."""
VALUE_FACTORS: dict[float, str] = {
    10.0: "a decimal prefix (e.g. mm vs cm)",
    18.0: "mg/dL vs mmol/L (glucose)",
    88.4: "umol/L vs mg/dL (creatinine)",
    100.0: "e.g. cm vs m, or percent vs fraction",
    1000.0: "e.g. mg vs g, or umol vs mmol",
    1e6: "e.g. ug vs g",
}
"""Common ratios between the units of one measurement -> what they suggest."""
MAX_NAMES_SHOWN = 10

ColumnType = Literal["numeric", "categorical"]
Severity = Literal["error", "warning"]
Range = tuple[float, float]


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class SchemaProblem:
    """One way a site's data departs from the consortium schema.

    ``str()`` reads like ``site 'north': clinical.csv: column 'sex': missing ...`` (the severity is
    not in it: callers list errors and warnings apart). ``file`` is relative to the site folder.
    """

    site: str
    file: str
    column: str | None
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        text = f"site '{self.site}': {self.file}: "
        if self.column is not None:
            text += f"column '{self.column}': "
        return text + self.message


@dataclass(frozen=True)
class _Where:
    """The site and file being checked, and the schema's disclosure threshold."""

    site: str
    file: str
    min_cell: int

    def error(self, column: str | None, message: str) -> SchemaProblem:
        return SchemaProblem(self.site, self.file, column, message, "error")

    def warning(self, column: str | None, message: str) -> SchemaProblem:
        return SchemaProblem(self.site, self.file, column, message, "warning")


# --------------------------------------------------------------------------- numbers


def round_outward(value: float, digits: int, up: bool) -> float:
    """The nearest number with ``digits`` significant digits strictly above (``up``) or below
    ``value``: never ``value`` itself, so a rounded extreme is no patient's exact value. Zero and
    non-finite values are returned unchanged."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    magnitude = abs(value)
    exponent = math.floor(math.log10(magnitude)) - digits + 1
    scaled = round(magnitude / 10.0**exponent, 9)
    if up == (value > 0):  # away from zero
        mantissa = math.floor(scaled) + 1
    else:
        mantissa = math.ceil(scaled) - 1
        if mantissa < 10 ** (digits - 1):  # below a power of ten: one digit finer
            mantissa, exponent = 10**digits - 1, exponent - 1
    return math.copysign(float(f"{mantissa}e{exponent}"), value)


def rounded_range(values: np.ndarray, digits: int, min_cell: int = 1) -> Range | None:
    """[low, high] of the finite ``values`` rounded outward (None when there is none), from the
    ``min_cell``-th lowest and highest values: a bound never rests on fewer than ``min_cell``
    patients (the rounded maximum of integer ages would tell the oldest patient's age)."""
    finite = np.sort(values[np.isfinite(values)])
    if finite.size == 0:
        return None
    k = min(max(min_cell, 1), finite.size) - 1
    return round_outward(float(finite[k]), digits, up=False), round_outward(float(finite[-1 - k]), digits, up=True)


def _number_text(value: float) -> str:
    """A number as a person writes it: 4000, 0.25, 1e+06."""
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:g}"


def _range_text(value: Range | None) -> str:
    return "none" if value is None else f"[{_number_text(value[0])}, {_number_text(value[1])}]"


def _about(value: float) -> str:
    """``value`` to 2 significant digits."""
    return _number_text(float(f"{value:.2g}"))


def _json_number(value: float) -> int | float:
    return int(value) if value == int(value) and abs(value) < 2**53 else value


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:MAX_NAMES_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_NAMES_SHOWN else "")


# --------------------------------------------------------------------------- field validation


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(where: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"field '{where or '(top level)'}' must be {expected}, got {_shown(value)}")


def _object(value: Any, where: str, required: tuple[str, ...] = (), optional: tuple[str, ...] | None = ()) -> dict:
    """``value`` as a JSON object holding ``required`` keys and, unless ``optional`` is None
    (any key), no key outside ``required + optional``."""
    if not isinstance(value, dict):
        raise _bad(where, "an object", value)
    for key in required:
        if key not in value:
            raise ValueError(f"field '{_at(where, key)}' is missing")
    if optional is not None:
        unknown = sorted(set(value) - set(required) - set(optional))
        if unknown:
            valid = ", ".join((*required, *optional))
            raise ValueError(f"field '{where or '(top level)'}': unknown keys {unknown} (valid: {valid})")
    return value


def _text(value: Any, where: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or not (allow_empty or value.strip()):
        raise _bad(where, "a string" if allow_empty else "a non-empty string", value)
    return value


def _choice(value: Any, where: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise _bad(where, f"one of {list(options)}", value)
    return value


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(where, f"an integer of at least {minimum}", value)
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(where, "a finite number", value)
    return float(value)


def _range(value: Any, where: str, nullable: bool = False) -> Range | None:
    if value is None and nullable:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise _bad(where, "[low, high]" + (" or null" if nullable else ""), value)
    low, high = (_number(v, f"{where}[{i}]") for i, v in enumerate(value))
    if low > high:
        raise _bad(where, "[low, high] with low <= high", value)
    return low, high


def _unique_list(value: Any, where: str, item: Callable[[Any, str], Any]) -> list:
    if not isinstance(value, list):
        raise _bad(where, "a list", value)
    items = [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
    repeated = sorted({str(v) for v, n in Counter(items).items() if n > 1})
    if repeated:
        raise ValueError(f"field '{where}': repeated entries {repeated}")
    return items


def _range_json(value: Range | None) -> list[int | float] | None:
    return None if value is None else [_json_number(value[0]), _json_number(value[1])]


# --------------------------------------------------------------------------- unit and range checks


@dataclass(frozen=True)
class _Scale:
    """How one quantity is compared with its consortium range."""

    label: str
    """What the values are, in messages ("survival times", "values")."""
    digits: int
    """Significant digits its schema range was rounded to."""
    factors: Mapping[float, str]
    """Known unit ratios it may be off by."""
    unit_off: Callable[[np.ndarray, Range, float | None], bool]
    """Whether values (given the range and the estimated ratio of scales) look like another unit."""
    unit_note: str = ""
    """Appended to the schema's range in messages (", which says days")."""
    both_ends: bool = True
    """Estimate the ratio of scales from both ends of the range (values), or from the maxima only
    (survival times, whose minimum is too noisy)."""


def _maximum_off(values: np.ndarray, schema_range: Range, ratio: float | None) -> bool:
    """The site's maximum lies 10x or more above or below the schema's (survival times)."""
    return ratio is not None and not 1 / SURVIVAL_UNIT_FACTOR < ratio < SURVIVAL_UNIT_FACTOR


def _median_off(values: np.ndarray, schema_range: Range, ratio: float | None) -> bool:
    """The site's median lies outside the range by a factor of 5 or more."""
    median = float(np.median(values))
    low, high = schema_range
    too_large = high > 0 and median > VALUE_UNIT_FACTOR * high
    too_small = low > 0 and 0 < median < low / VALUE_UNIT_FACTOR
    return too_large or too_small


def _ratio_interval(values: np.ndarray, schema_range: Range, scale: _Scale, min_cell: int = 1) -> Range | None:
    """How many times larger the site's values are than the reference site's, as an interval.

    The schema's upper bound was rounded up from a maximum in [the grid point below it, it), so
    the site's maximum over that bound gives an interval; with ``scale.both_ends`` and both
    minima positive, the interval from the minima (the lower bound was rounded down from a
    minimum in (it, the grid point above it]) is averaged in, on a log scale (less noise). The
    site's extremes are its ``min_cell``-th lowest and highest values, as the schema's were."""
    ordered = np.sort(values)
    k = min(max(min_cell, 1), ordered.size) - 1
    high, site_max = schema_range[1], float(ordered[-1 - k])
    if high <= 0 or site_max <= 0:
        return None
    below = round_outward(high, scale.digits, up=False)
    interval = (site_max / high, site_max / below if below > 0 else site_max / high)
    low, site_min = schema_range[0], float(ordered[k])
    if not scale.both_ends or low <= 0 or site_min <= 0:
        return interval
    above = round_outward(low, scale.digits, up=True)
    lows = (site_min / above, site_min / low)
    return math.sqrt(interval[0] * lows[0]), math.sqrt(interval[1] * lows[1])


def _named_factor(interval: Range, factors: Mapping[float, str]) -> tuple[float, str] | None:
    """The known factor within 25% of some ratio in ``interval`` (either direction), closest to
    its geometric centre."""
    low, high = interval
    if high < 1:
        low, high = 1 / high, 1 / low
    if low < 1:
        return None
    centre = math.sqrt(low * high)
    candidates = [
        (f, text) for f, text in factors.items() if low / (1 + FACTOR_TOLERANCE) <= f <= high / (1 - FACTOR_TOLERANCE)
    ]
    return min(candidates, key=lambda c: abs(math.log(c[0] / centre)), default=None)


def _ratio_text(interval: Range, factors: Mapping[float, str]) -> str:
    """Like 'about 27x larger; a factor of ~30 suggests months vs days'."""
    ratio = math.sqrt(interval[0] * interval[1])
    text = f"about {_about(ratio)}x larger" if ratio >= 1 else f"about {_about(1 / ratio)}x smaller"
    named = _named_factor(interval, factors)
    return text + (f"; a factor of ~{_about(named[0])} suggests {named[1]}" if named else "")


def _range_problems(
    values: np.ndarray, schema_range: Range | None, scale: _Scale, where: _Where, column: str, outside: int
) -> list[SchemaProblem]:
    """An error when ``values`` look like another unit; else a warning when ``outside`` of them
    lie outside the schema's range (it comes from one site). Counts only, never a value."""
    values = values[np.isfinite(values)]
    if schema_range is None or values.size == 0:
        return []
    interval = _ratio_interval(values, schema_range, scale, where.min_cell)
    ratio = None if interval is None else math.sqrt(interval[0] * interval[1])
    in_schema = f"{_range_text(schema_range)} in the schema{scale.unit_note}"
    if scale.unit_off(values, schema_range, ratio):
        site_range = _range_text(rounded_range(values, scale.digits, where.min_cell))
        why = "" if interval is None else ": " + _ratio_text(interval, scale.factors)
        return [
            where.error(column, f"{scale.label} look like another unit (range about {site_range} vs {in_schema}){why}")
        ]
    if outside <= 2 * (where.min_cell - 1) + OUTSIDE_WARNING_SHARE * values.size:
        return []
    hint = ""
    if interval is not None and not 1 / HINT_FACTOR < ratio < HINT_FACTOR and _named_factor(interval, scale.factors):
        hint = "; another unit? " + _ratio_text(interval, scale.factors)
    message = f"{outside} {scale.label} outside the consortium range {_range_text(schema_range)}{scale.unit_note}"
    return [where.warning(column, message + hint)]


def _value_scale(label: str, unit: str) -> _Scale:
    return _Scale(label, VALUE_DIGITS, VALUE_FACTORS, _median_off, f" (unit '{unit}')" if unit else "")


def _outside(values: np.ndarray, schema_range: Range | None) -> int:
    if schema_range is None:
        return 0
    return int(((values < schema_range[0]) | (values > schema_range[1])).sum())


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelSpec:
    """The labels section: ``time_unit`` and ``time_range`` for survival, ``classes`` otherwise."""

    time_unit: str | None = None
    time_range: Range | None = None
    classes: tuple[int, ...] | None = None
    outcome: str | None = None
    """What the event (survival) or the positive class is, in the consortium's words ("death from
    any cause"): written by the people who agree the schema, never taken from a site's data; every
    report names it."""

    def to_dict(self) -> dict[str, Any]:
        named = {"outcome": self.outcome} if self.outcome is not None else {}
        if self.classes is not None:
            return {"classes": list(self.classes), **named}
        return {"time_unit": self.time_unit, "time_range": _range_json(self.time_range), **named}

    @classmethod
    def from_dict(cls, raw: Any, where: str, task: str) -> LabelSpec:
        """Validated: survival needs ``time_unit`` and ``time_range``, classification ``classes``;
        ``outcome`` is optional (one line of at most ``OUTCOME_CHARACTERS``)."""
        if task == "survival":
            raw = _object(raw, where, ("time_unit", "time_range"), ("outcome",))
            unit = _choice(raw["time_unit"], _at(where, "time_unit"), TIME_UNITS)
            return cls(
                time_unit=unit,
                time_range=_range(raw["time_range"], _at(where, "time_range")),
                outcome=_outcome(raw.get("outcome"), _at(where, "outcome")),
            )
        raw = _object(raw, where, ("classes",), ("outcome",))
        classes = _unique_list(raw["classes"], _at(where, "classes"), lambda v, w: _integer(v, w, 0))
        if not classes or (task == "binary" and not set(classes) <= {0, 1}):
            raise _bad(_at(where, "classes"), "a non-empty list of classes (0 and 1 for binary)", raw["classes"])
        return cls(classes=tuple(sorted(classes)), outcome=_outcome(raw.get("outcome"), _at(where, "outcome")))


OUTCOME_CHARACTERS = 120
"""Longest outcome description a schema may hold (a name, not a protocol)."""


def _outcome(value: Any, where: str) -> str | None:
    """A schema's outcome description: absent, or one non-empty line of at most ``OUTCOME_CHARACTERS``."""
    if value is None:
        return None
    text = _text(value, where)
    if len(text) > OUTCOME_CHARACTERS or not text.isprintable():
        raise _bad(where, f"one line of at most {OUTCOME_CHARACTERS} printable characters", value)
    return text.strip()


def _survival_labels(labels: Labels, min_cell: int, time_unit: str) -> LabelSpec:
    times = labels.table["time"].to_numpy(float)
    return LabelSpec(time_unit=time_unit, time_range=rounded_range(times, TIME_DIGITS, min_cell))


def _class_labels(labels: Labels, min_cell: int, time_unit: str) -> LabelSpec:
    return LabelSpec(classes=tuple(sorted(int(c) for c in labels.table["label"].unique())))


def _check_survival(spec: LabelSpec, labels: Labels, where: _Where) -> list[SchemaProblem]:
    times = labels.table["time"].to_numpy(float)
    scale = _Scale("survival times", TIME_DIGITS, TIME_FACTORS, _maximum_off, f", which says {spec.time_unit}", False)
    return _range_problems(times, spec.time_range, scale, where, "time", _outside(times, spec.time_range))


def _check_classes(spec: LabelSpec, labels: Labels, where: _Where) -> list[SchemaProblem]:
    classes = spec.classes or ()
    unknown = int((~labels.table["label"].isin(classes)).sum())
    if not unknown:
        return []
    return [where.error("label", f"{unknown} labels hold classes not in the consortium's {list(classes)}")]


LABEL_SPECS: dict[str, Callable[[Labels, int, str], LabelSpec]] = {
    "survival": _survival_labels,
    "binary": _class_labels,
    "multiclass": _class_labels,
}
"""Task -> how the labels section is derived from the reference site."""
LABEL_CHECKS: dict[str, Callable[[LabelSpec, Labels, _Where], list[SchemaProblem]]] = {
    "survival": _check_survival,
    "binary": _check_classes,
    "multiclass": _check_classes,
}
"""Task -> how a site's labels are checked against the labels section."""


# --------------------------------------------------------------------------- tabular


@dataclass(frozen=True)
class ColumnSpec:
    """One tabular column: numeric (with a rounded ``range``) or categorical (with the
    ``categories`` held by at least ``min_cell`` reference patients)."""

    type: ColumnType
    unit: str = ""
    range: Range | None = None
    categories: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.type == "numeric":
            return {"type": "numeric", "unit": self.unit, "range": _range_json(self.range)}
        return {"type": "categorical", "unit": self.unit, "categories": list(self.categories or ())}

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> ColumnSpec:
        column_type = _choice(
            _object(raw, where, ("type",), None)["type"], _at(where, "type"), ("numeric", "categorical")
        )
        unit = _text(raw.get("unit", ""), _at(where, "unit"), allow_empty=True)
        if column_type == "numeric":
            raw = _object(raw, where, ("type",), ("unit", "range"))
            return cls("numeric", unit, range=_range(raw.get("range"), _at(where, "range"), nullable=True))
        raw = _object(raw, where, ("type", "categories"), ("unit",))
        categories = _unique_list(raw["categories"], _at(where, "categories"), lambda v, w: _text(v, w, True))
        return cls("categorical", unit, categories=tuple(categories))

    def pandera_column(self) -> pa.Column:
        """The pandera column: float64 within the range, or text among the categories."""
        if self.type == "numeric":
            checks = [] if self.range is None else [pa.Check.in_range(*self.range)]
            return pa.Column("float64", checks, nullable=True)
        return pa.Column(object, pa.Check.isin(list(self.categories or ())), nullable=True)


def _column_type(values: pd.Series) -> ColumnType:
    return "numeric" if pd.api.types.is_numeric_dtype(values) else "categorical"


def _numeric_column(values: pd.Series, min_cell: int, unit: str) -> ColumnSpec:
    numbers = values.to_numpy(float)
    held = int(np.isfinite(numbers).sum())
    value_range = rounded_range(numbers, VALUE_DIGITS, min_cell) if held >= min_cell else None
    return ColumnSpec("numeric", unit, range=value_range)


def _categorical_column(values: pd.Series, min_cell: int, unit: str) -> ColumnSpec:
    counts = values.dropna().map(str).value_counts()
    return ColumnSpec("categorical", unit, categories=tuple(sorted(c for c, n in counts.items() if n >= min_cell)))


COLUMN_SPECS: dict[str, Callable[[pd.Series, int, str], ColumnSpec]] = {
    "numeric": _numeric_column,
    "categorical": _categorical_column,
}
"""Column type -> how its spec is derived from the reference site."""

_TYPE_WORDS = {"numeric": "numeric", "categorical": "categorical (text)"}


def _validation_frame(table: pd.DataFrame, columns: Mapping[str, ColumnSpec]) -> pd.DataFrame:
    """The table as pandera sees it: numeric columns as float64, others as text (object); an
    all-missing column takes the schema's type (it holds nothing to disagree with)."""
    frame = {}
    for name in table.columns:
        values = table[name]
        wanted = columns[name].type if name in columns and values.isna().all() else _column_type(values)
        if wanted == "numeric":
            frame[name] = pd.to_numeric(values, errors="coerce").astype("float64")
        else:
            frame[name] = values.map(str, na_action="ignore").astype(object)
    return pd.DataFrame(frame, index=table.index)


def _pandera_failures(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> pd.DataFrame:
    """Every failure pandera finds (lazy validation), one row per failing value or column, with
    ``column`` set for schema-level failures (missing or extra columns) too."""
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases.copy()
    else:
        return pd.DataFrame(columns=["check", "column", "failure_case"])
    schema_level = cases["column"].isna()
    cases.loc[schema_level, "column"] = cases.loc[schema_level, "failure_case"].astype(str)
    cases["check"] = cases["check"].astype(str).str.split("(").str[0]
    return cases


@dataclass(frozen=True)
class _TableCheck:
    """What the failure handlers of one tabular check share."""

    spec: TabularSpec
    frame: pd.DataFrame
    where: _Where

    def extra_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c not in self.spec.columns]


def _missing_column(check: _TableCheck, column: str, cases: pd.DataFrame) -> list[SchemaProblem]:
    extra = check.extra_columns()
    hint = f"; this file has columns not in the schema: {_names(extra)} (renamed?)" if extra else ""
    return [check.where.error(column, f"missing ({_TYPE_WORDS[check.spec.columns[column].type]} in the schema){hint}")]


def _extra_column(check: _TableCheck, column: str, cases: pd.DataFrame) -> list[SchemaProblem]:
    return [check.where.error(column, "not in the consortium schema (the consortium must agree on every column)")]


def _wrong_type(check: _TableCheck, column: str, cases: pd.DataFrame) -> list[SchemaProblem]:
    wanted = check.spec.columns[column].type
    found = _column_type(check.frame[column])
    return [check.where.error(column, f"{_TYPE_WORDS[wanted]} in the schema but {_TYPE_WORDS[found]} here")]


def _out_of_range(check: _TableCheck, column: str, cases: pd.DataFrame) -> list[SchemaProblem]:
    spec = check.spec.columns[column]
    values = check.frame[column].to_numpy(float)
    return _range_problems(values, spec.range, _value_scale("values", spec.unit), check.where, column, len(cases))


def _unknown_categories(check: _TableCheck, column: str, cases: pd.DataFrame) -> list[SchemaProblem]:
    """An error naming the categories held by at least ``min_cell`` patients here; the rarer
    ones are counted only (a warning when only those)."""
    counts = Counter(str(v) for v in cases["failure_case"])
    common = sorted((c for c, n in counts.items() if n >= check.where.min_cell), key=lambda c: (-counts[c], c))
    rare = [c for c in counts if counts[c] < check.where.min_cell]
    allowed = list(check.spec.columns[column].categories or ())
    parts = [f"{c!r} ({counts[c]} rows)" for c in common]
    if rare:
        rows = sum(counts[c] for c in rare)
        parts.append(
            f"{len(rare)} rare value{'s' * (len(rare) > 1)} ({rows} rows, each held by fewer than "
            f"{check.where.min_cell} patients here)"
        )
    message = f"{sum(counts.values())} values not among the consortium's categories [{_names(allowed)}]: "
    if common:
        return [check.where.error(column, message + "; ".join(parts))]
    return [check.where.warning(column, message + parts[0] + "; they count as 'other', like unseen categories")]


def _other_failure(check: _TableCheck, column: str, cases: pd.DataFrame) -> list[SchemaProblem]:
    return [check.where.error(column, f"{len(cases)} values fail the check {cases['check'].iloc[0]!r}")]


TABLE_FAILURES: dict[str, Callable[[_TableCheck, str, pd.DataFrame], list[SchemaProblem]]] = {
    "column_in_dataframe": _missing_column,
    "column_in_schema": _extra_column,
    "dtype": _wrong_type,
    "in_range": _out_of_range,
    "isin": _unknown_categories,
}
"""pandera check name -> the problems its failure cases mean (others: :func:`_other_failure`)."""


@dataclass(frozen=True)
class TabularSpec:
    """A wide table: its columns, each numeric or categorical."""

    columns: dict[str, ColumnSpec]
    kind: ClassVar[str] = "tabular"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "columns": {n: c.to_dict() for n, c in self.columns.items()}}

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> TabularSpec:
        raw = _object(raw, where, ("kind", "columns"))
        columns = _object(raw["columns"], _at(where, "columns"), optional=None)
        if not columns:
            raise _bad(_at(where, "columns"), "a non-empty object", columns)
        return cls({str(n): ColumnSpec.from_dict(c, _at(where, f"columns.{n}")) for n, c in columns.items()})

    @classmethod
    def from_data(cls, data: ModalityData, min_cell: int, units: Mapping[str, str]) -> TabularSpec:
        assert data.table is not None
        table = data.table
        return cls(
            {
                str(n): COLUMN_SPECS[_column_type(table[n])](table[n], min_cell, units.get(str(n), ""))
                for n in table.columns
            }
        )

    def check(self, data: ModalityData, where: _Where) -> list[SchemaProblem]:
        """pandera validates the whole table lazily; its failures become problems by check name.
        A column of the wrong type is reported once (its other checks are meaningless)."""
        assert data.table is not None
        frame = _validation_frame(data.table, self.columns)
        schema = pa.DataFrameSchema({n: c.pandera_column() for n, c in self.columns.items()}, strict=True)
        cases = _pandera_failures(schema, frame)
        wrong_type = set(cases.loc[cases["check"] == "dtype", "column"])
        cases = cases[(cases["check"] == "dtype") | ~cases["column"].isin(wrong_type)]
        order = {name: i for i, name in enumerate([*self.columns, *frame.columns])}
        check = _TableCheck(self, frame, where)
        problems: list[SchemaProblem] = []
        groups = cases.groupby(["column", "check"], sort=False)
        for (column, name), group in sorted(groups, key=lambda g: order.get(g[0][0], len(order))):
            problems += TABLE_FAILURES.get(name, _other_failure)(check, column, group)
        return problems


# --------------------------------------------------------------------------- time series


@dataclass(frozen=True)
class VariableSpec:
    """One time-series variable: its unit and rounded value range."""

    unit: str = ""
    range: Range | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "range": _range_json(self.range)}

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> VariableSpec:
        raw = _object(raw, where, (), ("unit", "range"))
        unit = _text(raw.get("unit", ""), _at(where, "unit"), allow_empty=True)
        return cls(unit, _range(raw.get("range"), _at(where, "range"), nullable=True))


@dataclass(frozen=True)
class TimeseriesSpec:
    """A long table: the variables observed in at least ``min_cell`` reference patients, and the
    rounded range of times."""

    variables: dict[str, VariableSpec]
    time_range: Range | None
    kind: ClassVar[str] = "timeseries"

    def to_dict(self) -> dict[str, Any]:
        variables = {n: v.to_dict() for n, v in self.variables.items()}
        return {"kind": self.kind, "time_range": _range_json(self.time_range), "variables": variables}

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> TimeseriesSpec:
        raw = _object(raw, where, ("kind", "variables", "time_range"))
        variables = _object(raw["variables"], _at(where, "variables"), optional=None)
        return cls(
            {str(n): VariableSpec.from_dict(v, _at(where, f"variables.{n}")) for n, v in variables.items()},
            _range(raw["time_range"], _at(where, "time_range"), nullable=True),
        )

    @classmethod
    def from_data(cls, data: ModalityData, min_cell: int, units: Mapping[str, str]) -> TimeseriesSpec:
        assert data.table is not None
        table = data.table
        patients = table.groupby("variable")["id"].nunique()
        kept = sorted(str(v) for v, n in patients.items() if n >= min_cell)
        rows = table[table["variable"].isin(kept)]
        variables = {
            v: VariableSpec(
                units.get(v, ""),
                rounded_range(rows.loc[rows["variable"] == v, "value"].to_numpy(float), VALUE_DIGITS, min_cell),
            )
            for v in kept
        }
        return cls(variables, rounded_range(rows["time"].to_numpy(float), TIME_DIGITS, min_cell))

    def check(self, data: ModalityData, where: _Where) -> list[SchemaProblem]:
        """Plain pandas (a long table: one row per observation, not per patient). Times are
        compared over the schema's variables only, as the schema's time range was."""
        assert data.table is not None
        table = data.table
        patients = table.groupby("variable")["id"].nunique()
        problems = self._variable_set_problems(patients, where)
        for name, spec in self.variables.items():
            if name in patients.index:
                values = table.loc[table["variable"] == name, "value"].to_numpy(float)
                scale = _value_scale(f"values of variable '{name}'", spec.unit)
                problems += _range_problems(values, spec.range, scale, where, "value", _outside(values, spec.range))
        times = table.loc[table["variable"].isin(list(self.variables)), "time"].to_numpy(float)
        scale = _Scale("times", TIME_DIGITS, CLOCK_FACTORS, _median_off)
        return problems + _range_problems(
            times, self.time_range, scale, where, "time", _outside(times, self.time_range)
        )

    def _variable_set_problems(self, patients: pd.Series, where: _Where) -> list[SchemaProblem]:
        """Variables not in the schema (named when observed in ``min_cell`` or more patients here;
        errors), rare ones counted (a warning), schema variables never observed here (warnings)."""
        unknown = {str(v): int(n) for v, n in patients.items() if str(v) not in self.variables}
        common = sorted(v for v, n in unknown.items() if n >= where.min_cell)
        rare = len(unknown) - len(common)
        problems = [
            where.error(
                "variable", f"variable {v!r} (observed in {unknown[v]} patients) is not in the consortium schema"
            )
            for v in common
        ]
        if rare:
            problems.append(
                where.warning(
                    "variable",
                    f"{rare} rare variables (each observed in fewer than {where.min_cell} patients here) "
                    "are not in the consortium schema",
                )
            )
        absent = [v for v in self.variables if v not in patients.index]
        problems += [
            where.warning("variable", f"variable {v!r} of the consortium schema is never observed here") for v in absent
        ]
        return problems


# --------------------------------------------------------------------------- images, bags


def _image_shape(array: np.ndarray) -> tuple[int, int, int]:
    """(C, H, W) of an (H, W) or (H, W, C) image."""
    return (1, *array.shape) if array.ndim == 2 else (array.shape[2], array.shape[0], array.shape[1])


@dataclass(frozen=True)
class ImageSpec:
    """Images: their shape (C, H, W)."""

    shape: tuple[int, int, int]
    kind: ClassVar[str] = "image"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> ImageSpec:
        shape = _object(raw, where, ("kind", "shape"))["shape"]
        if not isinstance(shape, list) or len(shape) != 3:
            raise _bad(_at(where, "shape"), "[C, H, W]", shape)
        return cls(tuple(_integer(s, f"{where}.shape[{i}]", 1) for i, s in enumerate(shape)))

    @classmethod
    def from_data(cls, data: ModalityData, min_cell: int, units: Mapping[str, str]) -> ImageSpec:
        assert data.arrays
        return cls(Counter(_image_shape(a) for a in data.arrays.values()).most_common(1)[0][0])

    def check(self, data: ModalityData, where: _Where) -> list[SchemaProblem]:
        assert data.arrays is not None
        shapes = Counter(_image_shape(a) for a in data.arrays.values())
        odd = {s: n for s, n in shapes.items() if s != self.shape}
        return [
            where.error(None, f"{n} images are (C, H, W) = {s} here but {self.shape} in the consortium schema")
            for s, n in sorted(odd.items())
        ]


@dataclass(frozen=True)
class BagsSpec:
    """Bags of instance features: the feature count F."""

    features: int
    kind: ClassVar[str] = "bags"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "features": self.features}

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> BagsSpec:
        return cls(_integer(_object(raw, where, ("kind", "features"))["features"], _at(where, "features"), 1))

    @classmethod
    def from_data(cls, data: ModalityData, min_cell: int, units: Mapping[str, str]) -> BagsSpec:
        assert data.arrays
        return cls(Counter(a.shape[1] for a in data.arrays.values()).most_common(1)[0][0])

    def check(self, data: ModalityData, where: _Where) -> list[SchemaProblem]:
        assert data.arrays is not None
        widths = Counter(a.shape[1] for a in data.arrays.values())
        return [
            where.error(None, f"{n} bags have F = {f} features here but {self.features} in the consortium schema")
            for f, n in sorted(widths.items())
            if f != self.features
        ]


# --------------------------------------------------------------------------- kinds without a spec


@dataclass(frozen=True)
class UncheckedSpec:
    """A kind whose module gives no schema spec (a plugin's choice): the schema records the kind
    and checks nothing more."""

    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> UncheckedSpec:
        return cls(_object(raw, where, ("kind",))["kind"])

    @classmethod
    def from_data(cls, data: ModalityData, min_cell: int, units: Mapping[str, str]) -> UncheckedSpec:
        return cls(data.kind)

    def check(self, data: ModalityData, where: _Where) -> list[SchemaProblem]:
        return []


ModalitySpec = TabularSpec | TimeseriesSpec | ImageSpec | BagsSpec | UncheckedSpec


def spec_class(kind: str) -> Any:
    """The spec class of a modality kind (``from_data``, ``from_dict``, ``to_dict``, ``check``)."""
    return modality_kind(kind).schema_spec or UncheckedSpec


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class ConsortiumSchema:
    """The consortium's data contract (see the module docstring for the JSON format)."""

    task: str
    labels: LabelSpec
    modalities: dict[str, ModalitySpec]
    min_cell: int = DEFAULT_MIN_CELL
    version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (plain dicts, lists, strings and numbers)."""
        return {
            "version": self.version,
            "task": self.task,
            "min_cell": self.min_cell,
            "labels": self.labels.to_dict(),
            "modalities": {n: m.to_dict() for n, m in self.modalities.items()},
        }

    @classmethod
    def from_dict(cls, raw: Any) -> ConsortiumSchema:
        """Validate every field; raise ValueError naming the first wrong one."""
        raw = _object(raw, "", ("version", "task", "min_cell", "labels", "modalities"))
        version = _integer(raw["version"], "version", 1)
        if version != SCHEMA_VERSION:
            raise ValueError(f"field 'version': unsupported version {version} (this fedlego reads {SCHEMA_VERSION})")
        task = _choice(raw["task"], "task", TASK_KINDS)
        min_cell = _integer(raw["min_cell"], "min_cell", 1)
        labels = LabelSpec.from_dict(raw["labels"], "labels", task)
        entries = _object(raw["modalities"], "modalities", optional=None)
        if not entries:
            raise _bad("modalities", "a non-empty object", entries)
        modalities = {str(n): _modality_from_dict(e, f"modalities.{n}") for n, e in entries.items()}
        return cls(task, labels, modalities, min_cell, version)

    def write(self, path: str | Path) -> Path:
        """Write the schema as indented JSON; return the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> ConsortiumSchema:
        """Read and validate a schema file; raise :class:`SiteDataError` naming the file and the field."""
        file = str(path)
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SiteDataError(file, "file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SiteDataError(file, f"not a valid JSON schema file ({exc})") from exc
        try:
            return cls.from_dict(raw)
        except ValueError as exc:
            raise SiteDataError(file, str(exc)) from exc


def _modality_from_dict(raw: Any, where: str) -> ModalitySpec:
    kind = _choice(_object(raw, where, ("kind",), None)["kind"], _at(where, "kind"), kind_names())
    return spec_class(kind).from_dict(raw, where)


def schema_from_site(
    site: SiteData,
    min_cell: int = DEFAULT_MIN_CELL,
    time_unit: str | None = None,
    units: Mapping[str, Mapping[str, str]] | None = None,
    outcome: str | None = None,
) -> ConsortiumSchema:
    """The schema of a reference site: its task, modalities, column types, rounded ranges and
    the categories / variables held by at least ``min_cell`` of its patients. ``time_unit`` names
    the unit of its survival times (default: the site's own, else days); ``units`` (modality ->
    column or variable -> unit) fills the optional units (empty otherwise); ``outcome`` describes
    the event or positive class (``LabelSpec.outcome``)."""
    time_unit = time_unit or site.dataset.labels.time_unit or "days"
    if time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit must be one of {list(TIME_UNITS)}, got {time_unit!r}")
    if isinstance(min_cell, bool) or not isinstance(min_cell, int) or min_cell < 1:
        raise ValueError(f"min_cell must be an integer of at least 1, got {min_cell!r}")
    units = units or {}
    labels = site.dataset.labels
    modalities = {
        name: spec_class(data.kind).from_data(data, min_cell, units.get(name, {}))
        for name, data in site.dataset.modalities.items()
    }
    spec = replace(LABEL_SPECS[labels.task](labels, min_cell, time_unit), outcome=_outcome(outcome, "outcome"))
    return ConsortiumSchema(labels.task, spec, modalities, min_cell)


def schema_hash(schema: ConsortiumSchema) -> str:
    """SHA-256 (hex) of the schema's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(schema.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --------------------------------------------------------------------------- checking a site


def _relative(site: SiteData, source: str) -> str:
    """A file as named in problems: relative to the site folder (its local path stays there)."""
    path = Path(source)
    if site.path is not None:
        try:
            return path.resolve().relative_to(Path(site.path).resolve()).as_posix()
        except ValueError:
            pass
    return path.name


@dataclass(frozen=True)
class _SiteCheck:
    """The site being checked and the schema it is checked against."""

    site: SiteData
    schema: ConsortiumSchema
    problems: list[SchemaProblem] = field(default_factory=list)

    def where(self, source: str) -> _Where:
        return _Where(self.site.name, _relative(self.site, source), self.schema.min_cell)


def _check_task(check: _SiteCheck) -> None:
    labels = check.site.dataset.labels
    manifest = check.where("site.json" if check.site.path is None else str(Path(check.site.path) / "site.json"))
    if labels.task != check.schema.task:
        check.problems.append(
            manifest.error(None, f"task is '{labels.task}' here but '{check.schema.task}' in the consortium schema")
        )
        return
    check.problems.extend(LABEL_CHECKS[labels.task](check.schema.labels, labels, check.where(labels.source)))


def _check_modalities(check: _SiteCheck) -> None:
    held = check.site.dataset.modalities
    for name, spec in check.schema.modalities.items():
        data = held.get(name)
        if data is None:  # sites hold subsets of the consortium's modalities: that is MM-Lego's premise
            continue
        if data.kind != spec.kind:
            check.problems.append(
                check.where(data.source).error(
                    None, f"modality '{name}' is {data.kind} here but {spec.kind} in the consortium schema"
                )
            )
        else:
            check.problems.extend(spec.check(data, check.where(data.source)))
    for name, data in held.items():
        if name not in check.schema.modalities:
            check.problems.append(
                check.where(data.source).error(
                    None, f"modality '{name}' ({data.kind}) is not in the consortium schema (the consortium must agree)"
                )
            )


SITE_CHECKS: tuple[Callable[[_SiteCheck], None], ...] = (_check_task, _check_modalities)
"""The checks :func:`check_against_schema` runs, in order; each appends its problems."""


def check_against_schema(site: SiteData, schema: ConsortiumSchema) -> list[SchemaProblem]:
    """Every way ``site`` departs from ``schema``, all at once (errors and warnings; see the module
    docstring). Messages hold counts, never patient values or ids."""
    check = _SiteCheck(site, schema)
    for step in SITE_CHECKS:
        step(check)
    return check.problems
