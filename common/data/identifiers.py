"""Refuse identifier-like columns in a site's tables before anything is fitted on them.

A tabular preprocessor stores what it learns in the model package: the most frequent category
values of each text column and the median of each numeric one. A column holding patient names,
record numbers, dates of birth, phone numbers, e-mail addresses or free-text notes would leak
those values to the federation. :func:`identifier_columns` looks at a table (one row per patient,
feature columns numeric or text) and returns one :class:`IdentifierFinding` per suspicious column;
:func:`identifier_message` turns a finding into the one-line refusal shown at the hospital.
Findings and messages never contain cell values, only counts.

Plain rules on column names and values (Microsoft Presidio would need a spaCy language model that
is not available here). Per column the first rule that fires gives the finding:

Text columns (numbers stored as text count as numeric when at least 90% of them parse). Up to
1000 non-missing values are sampled (fixed seed); distinctness is counted on the whole column.

1. Value patterns (:data:`VALUE_PATTERNS`): at least half of the sampled values are
   e-mail addresses; dates (ISO ``2024-01-31`` with optional time, ``31/01/2024``, ``31.01.2024``,
   ``01-31-1980``, ``2024/01/31``, month names as in ``Jan 31 1980`` or ``31-Jan-1980``); phone
   numbers (7 to 15 digits written with separators or a leading ``+``: ``+41 44 123 45 67``,
   ``(555) 123-4567``). Id-like codes (letters and digits mixed: ``MRN1004``, ``P-000123``,
   ``AB123456``, ``Smith-P0004``) and person names (two or more capitalised alphabetic words:
   ``Jane Doe``, ``Doe, Jane``, ``J. O'Neil``) count only in a column that is also mostly distinct
   (at least 75% of at least 5 values), so repeated codes such as ``T1N0M0`` or ``Usual Type`` pass.
2. Dates by name: a column whose name hints at dates (see 4.) and whose values parse as dates
   (the patterns above, or :func:`pandas.to_datetime` with ``format="mixed"`` for values that are
   not plain numbers, with a year in 1800..2200), at least half of them.
3. Other name hints: a text column whose name hints at names, record numbers, phone numbers,
   e-mail or postal addresses is refused whatever its values (so ``drug_name`` is refused too:
   drop or rename it).
4. Free text: the distinct values average more than 30 characters or at least 4 words, and the
   column has at least 5 distinct values making up at least 20% of its values. (Long category
   labels repeated across patients, such as TCGA's histological types, pass.)
5. Unique per patient: at least 5 values of which at least 90% are distinct (names, record
   numbers, notes, whatever their form).

Numeric columns:

6. A name hint for record numbers or phone numbers (``mrn``, ``ssn``, ``nhs number``,
   ``passport``, ``record number``, ``patient id``, ``phone`` ...) and whole numbers of which at
   least 90% of at least 5 are distinct.
7. A name hint for dates and at least half of the values are valid dates written as YYYYMMDD
   integers (19000101..21001231).

Continuous lab values (all distinct floats), ages, counts and day differences are never refused.

Column name hints (:data:`NAME_HINTS`) are matched on whole words: the name is split on anything
not a letter or digit and at camelCase boundaries, lower-cased, and a hint matches a run of
consecutive words (``n_admissions`` is not ``name``, ``PatientName`` is ``patient name``,
``date_diff_days`` has the date hint but is numeric and not YYYYMMDD, so it passes).

What is missed: identifiers in under half of a column's values (a notes column mentioning a name
now and then, mixed contact columns); short free text repeated across patients; rare but shared
values (a rare diagnosis or a small town); quasi-identifiers such as postcodes or ages stored as
numbers, year of birth, or dates encoded as day counts, Excel serial numbers or timestamps;
names written in lower or upper case only, unless the column is mostly distinct; names in
non-Latin scripts without case; identifiers hidden in column names themselves. Small tables
(under 5 values) are only checked by patterns and name hints.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import SiteDataError

SAMPLE_SIZE = 1000
"""Non-missing values of a text column that the value patterns look at."""
PATTERN_SHARE = 0.5
"""A value pattern fires when at least this share of the sampled values match it."""
MIN_VALUES = 5
"""Distinctness rules need at least this many non-missing values."""
UNIQUE_SHARE = 0.9
"""Text (or whole numbers with an id hint) with at least this share of distinct values is per patient."""
CODE_UNIQUE_SHARE = 0.75
"""Id-like codes and person names must be at least this distinct."""
FREE_TEXT_CHARS = 30
FREE_TEXT_WORDS = 4
FREE_TEXT_MIN_DISTINCT = 5
FREE_TEXT_DISTINCT_SHARE = 0.2
NUMERIC_SHARE = 0.9
"""A text column is numeric when at least this share of its values parse as numbers (as the readers do)."""
YEARS = (1800, 2200)


@dataclass(frozen=True)
class IdentifierFinding:
    """A column that looks like it identifies patients: why, and how many values matched
    (never the values themselves)."""

    column: str
    reason: str
    examples: int


# --------------------------------------------------------------------------- value patterns

_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_TIME = r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_YMD = re.compile(rf"(\d{{4}})[-/.](\d{{1,2}})[-/.](\d{{1,2}}){_TIME}")
_DMY = re.compile(rf"(\d{{1,2}})[-/.](\d{{1,2}})[-/.](\d{{4}}|\d{{2}}){_TIME}")
_NAMED_MONTH = re.compile(
    rf"(?:\d{{1,2}}(?:st|nd|rd|th)?[\s/-]+)?(?:{_MONTHS})[a-z]*\.?(?:[\s/-]+\d{{1,2}}(?:st|nd|rd|th)?)?,?[\s/-]+\d{{4}}",
    re.IGNORECASE,
)
_PHONE = re.compile(r"\+?[\d\s().\-/]+")
_PHONE_SEPARATORS = re.compile(r"[\s().\-/]")
_DECIMAL = re.compile(r"[+-]?\d+\.\d+")
_CODE = re.compile(r"(?=[^\d]*\d)(?=[^A-Za-z]*[A-Za-z])[A-Za-z0-9]+(?:[-_/.:#][A-Za-z0-9]+)*")
_NAME_SPLIT = re.compile(r"[\s,]+")
_NAME_PART_SPLIT = re.compile(r"['\u2019-]")
_PLAIN_NUMBER = re.compile(r"[+-]?[\d\s.,]+")


def _is_email(value: str) -> bool:
    return _EMAIL.fullmatch(value) is not None


def _is_day_month(day: int, month: int) -> bool:
    return 1 <= day <= 31 and 1 <= month <= 12


def _is_date(value: str) -> bool:
    """ISO-like year first, day/month (either order) then year, or a written month and a year."""
    if match := _YMD.fullmatch(value):
        year, month, day = (int(g) for g in match.groups())
        return YEARS[0] <= year <= YEARS[1] and _is_day_month(day, month)
    if match := _DMY.fullmatch(value):
        first, second = int(match.group(1)), int(match.group(2))
        return _is_day_month(first, second) or _is_day_month(second, first)
    return _NAMED_MONTH.fullmatch(value) is not None


def _is_phone(value: str) -> bool:
    """7 to 15 digits with separators or a leading ``+`` (plain numbers and decimals excluded)."""
    if _PHONE.fullmatch(value) is None or _DECIMAL.fullmatch(value) is not None:
        return False
    digits = sum(c.isdigit() for c in value)
    return 7 <= digits <= 15 and (value.startswith("+") or _PHONE_SEPARATORS.search(value) is not None)


def _is_code(value: str) -> bool:
    return len(value) >= 4 and _CODE.fullmatch(value) is not None


def _is_name_word(word: str) -> bool:
    """``Jane``, ``O'Neil``, ``Smith-Jones``, ``J.``: capitalised alphabetic parts (an initial may be one letter)."""
    parts = _NAME_PART_SPLIT.split(word.removesuffix("."))
    return all(p.isalpha() and p[0].isupper() and (len(p) == 1 or p[1:].islower()) for p in parts)


def _is_person_name(value: str) -> bool:
    words = [w for w in _NAME_SPLIT.split(value) if w]
    return len(words) >= 2 and all(map(_is_name_word, words)) and any(len(w.rstrip(".")) > 1 for w in words)


@dataclass(frozen=True)
class ValuePattern:
    """What a matching text value looks like, and whether the column must also be mostly distinct."""

    label: str
    matches: Callable[[str], bool]
    needs_distinct: bool = False


VALUE_PATTERNS: dict[str, ValuePattern] = {
    "email": ValuePattern("e-mail addresses", _is_email),
    "date": ValuePattern("dates", _is_date),
    "phone": ValuePattern("phone numbers", _is_phone),
    "code": ValuePattern("record numbers or other id codes", _is_code, needs_distinct=True),
    "person": ValuePattern("person names", _is_person_name, needs_distinct=True),
}
"""Checked in this order; the first that fires names the finding."""


# --------------------------------------------------------------------------- column name hints

HINT_KINDS: dict[str, str] = {
    "name": "personal names",
    "id": "record numbers or national ids",
    "phone": "phone numbers",
    "email": "e-mail addresses",
    "address": "postal addresses",
    "date": "dates",
}
"""What each kind of name hint suggests the column holds."""

NAME_HINTS: dict[str, str] = {
    "name": "name",
    "names": "name",
    "surname": "name",
    "firstname": "name",
    "lastname": "name",
    "fullname": "name",
    "patientname": "name",
    "mrn": "id",
    "medical record": "id",
    "record number": "id",
    "record no": "id",
    "ssn": "id",
    "social security": "id",
    "nhs number": "id",
    "nhs no": "id",
    "passport": "id",
    "patient id": "id",
    "patientid": "id",
    "phone": "phone",
    "telephone": "phone",
    "mobile": "phone",
    "phonenumber": "phone",
    "email": "email",
    "e mail": "email",
    "emailaddress": "email",
    "address": "address",
    "street": "address",
    "zip": "address",
    "zipcode": "address",
    "postcode": "address",
    "post code": "address",
    "postalcode": "address",
    "dob": "date",
    "birth date": "date",
    "date of birth": "date",
    "birthdate": "date",
    "dateofbirth": "date",
    "birthday": "date",
    "admission date": "date",
    "date": "date",
    "dates": "date",
}
"""Hint (words separated by spaces) -> kind in :data:`HINT_KINDS`, matched on whole words of a column name."""

NUMERIC_ID_KINDS = frozenset({"id", "phone"})
"""Hint kinds that refuse a numeric column of distinct whole numbers."""

_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def name_words(column: str) -> list[str]:
    """A column name's words, lower-cased: split on non-alphanumerics and camelCase
    (``dateOfBirth`` -> ``["date", "of", "birth"]``, ``n_admissions`` -> ``["n", "admissions"]``)."""
    return [w.lower() for w in _WORDS.findall(column)]


def name_hints(column: str) -> set[str]:
    """The kinds of :data:`NAME_HINTS` whose words occur consecutively in the column name."""
    words = name_words(column)
    found = set()
    for hint, kind in NAME_HINTS.items():
        phrase = hint.split()
        if any(words[i : i + len(phrase)] == phrase for i in range(len(words) - len(phrase) + 1)):
            found.add(kind)
    return found


# --------------------------------------------------------------------------- column checks


@dataclass(frozen=True)
class _TextColumn:
    name: str
    hints: frozenset[str]
    values: pd.Series
    """All non-missing values, as stripped strings."""
    sample: list[str]
    distinct: int

    @property
    def count(self) -> int:
        return len(self.values)

    def mostly_distinct(self, share: float) -> bool:
        return self.count >= MIN_VALUES and self.distinct >= share * self.count


def _pattern_finding(column: _TextColumn) -> IdentifierFinding | None:
    for pattern in VALUE_PATTERNS.values():
        if pattern.needs_distinct and not column.mostly_distinct(CODE_UNIQUE_SHARE):
            continue
        matched = sum(map(pattern.matches, column.sample))
        if matched and matched >= PATTERN_SHARE * len(column.sample):
            reason = f"values look like {pattern.label} ({matched} of {len(column.sample)} sampled)"
            return IdentifierFinding(column.name, reason, matched)
    return None


def _parses_as_date(values: list[str]) -> int:
    """How many values are dates: a date pattern, or ``pandas.to_datetime`` for non-numbers, year in range."""
    others = [v for v in values if not _is_date(v) and _PLAIN_NUMBER.fullmatch(v) is None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(pd.Series(others, dtype=object), format="mixed", errors="coerce")
    in_range = parsed.dt.year.between(*YEARS) if len(others) else pd.Series([], dtype=bool)
    return sum(map(_is_date, values)) + int(in_range.sum())


def _date_hint_finding(column: _TextColumn) -> IdentifierFinding | None:
    if "date" not in column.hints:
        return None
    matched = _parses_as_date(column.sample)
    if matched and matched >= PATTERN_SHARE * len(column.sample):
        reason = f"column name suggests dates and values look like dates ({matched} of {len(column.sample)} sampled)"
        return IdentifierFinding(column.name, reason, matched)
    return None


def _text_hint_finding(column: _TextColumn) -> IdentifierFinding | None:
    kinds = sorted(column.hints - {"date"})
    if not kinds:
        return None
    suggests = " or ".join(HINT_KINDS[k] for k in kinds)
    reason = f"column name suggests {suggests} and the column holds text ({column.count} values)"
    return IdentifierFinding(column.name, reason, column.count)


def _free_text_finding(column: _TextColumn) -> IdentifierFinding | None:
    distinct = pd.Series(column.values.unique(), dtype=object)
    if len(distinct) < FREE_TEXT_MIN_DISTINCT or len(distinct) < FREE_TEXT_DISTINCT_SHARE * column.count:
        return None
    chars, words = distinct.str.len().mean(), distinct.str.split().str.len().mean()
    if chars <= FREE_TEXT_CHARS and words < FREE_TEXT_WORDS:
        return None
    reason = (
        f"free text ({len(distinct)} of {column.count} values distinct, "
        f"on average {chars:.0f} characters and {words:.1f} words)"
    )
    return IdentifierFinding(column.name, reason, len(distinct))


def _unique_finding(column: _TextColumn) -> IdentifierFinding | None:
    if not column.mostly_distinct(UNIQUE_SHARE):
        return None
    reason = (
        f"text unique per patient ({column.distinct} of {column.count} values distinct): "
        "names, record numbers or free text"
    )
    return IdentifierFinding(column.name, reason, column.distinct)


TEXT_CHECKS: tuple[Callable[[_TextColumn], IdentifierFinding | None], ...] = (
    _pattern_finding,
    _date_hint_finding,
    _text_hint_finding,
    _free_text_finding,
    _unique_finding,
)
"""Rules for text columns, in order; the first finding wins."""


def _numeric_id_finding(name: str, hints: set[str], numbers: np.ndarray) -> IdentifierFinding | None:
    kinds = sorted(hints & NUMERIC_ID_KINDS)
    if not kinds or len(numbers) < MIN_VALUES or not np.all(numbers == np.round(numbers)):
        return None
    distinct = len(np.unique(numbers))
    if distinct < UNIQUE_SHARE * len(numbers):
        return None
    suggests = " or ".join(HINT_KINDS[k] for k in kinds)
    reason = f"column name suggests {suggests} and values are distinct whole numbers ({distinct} of {len(numbers)})"
    return IdentifierFinding(name, reason, distinct)


def _yyyymmdd_count(numbers: np.ndarray) -> int:
    whole = numbers[(numbers == np.round(numbers)) & (numbers >= 19000101) & (numbers <= 21001231)].astype(np.int64)
    month, day = whole // 100 % 100, whole % 100
    return int(np.sum((month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)))


def _numeric_date_finding(name: str, hints: set[str], numbers: np.ndarray) -> IdentifierFinding | None:
    if "date" not in hints or len(numbers) == 0:
        return None
    matched = _yyyymmdd_count(numbers)
    if matched < PATTERN_SHARE * len(numbers):
        return None
    reason = f"column name suggests dates and values look like YYYYMMDD dates ({matched} of {len(numbers)})"
    return IdentifierFinding(name, reason, matched)


NUMERIC_CHECKS: tuple[Callable[[str, set[str], np.ndarray], IdentifierFinding | None], ...] = (
    _numeric_id_finding,
    _numeric_date_finding,
)
"""Rules for numeric columns (they only fire with a name hint), in order."""


def _as_numbers(values: pd.Series) -> np.ndarray | None:
    """The finite non-missing values as floats if the column is numeric (or mostly numeric text), else None."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce").astype(float)
    elif pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_timedelta64_dtype(values):
        return None
    else:
        present = values.dropna()
        numbers = pd.to_numeric(present.map(str).str.strip(), errors="coerce")
        if len(present) == 0 or numbers.notna().mean() < NUMERIC_SHARE:
            return None
        numbers = numbers.astype(float)
    array = numbers.to_numpy(dtype=float)
    return array[np.isfinite(array)]


def _text_column(name: str, values: pd.Series) -> _TextColumn:
    text = values.dropna().map(str).str.strip()
    text = text[text != ""].reset_index(drop=True)
    sample = text.sample(n=SAMPLE_SIZE, random_state=0) if len(text) > SAMPLE_SIZE else text
    return _TextColumn(name, frozenset(name_hints(name)), text, sample.tolist(), int(text.nunique()))


def column_finding(name: str, values: pd.Series) -> IdentifierFinding | None:
    """The first rule (see the module docstring) that refuses this column, or None."""
    numbers = _as_numbers(values)
    if numbers is not None:
        hints = name_hints(name)
        checks = (check(name, hints, numbers) for check in NUMERIC_CHECKS)
    else:
        column = _text_column(name, values)
        if column.count == 0:
            return None
        checks = (check(column) for check in TEXT_CHECKS)
    return next((finding for finding in checks if finding is not None), None)


def identifier_columns(table: pd.DataFrame, declared_safe: Collection[str] = ()) -> list[IdentifierFinding]:
    """One finding per column of ``table`` that looks like it identifies patients.

    ``table`` has one row per patient (index: patient id) and feature columns, numeric or text.
    Columns named in ``declared_safe`` are skipped. See the module docstring for the rules.
    """
    safe = {str(c) for c in declared_safe}
    findings = []
    for column in table.columns:
        name = str(column)
        if name in safe:
            continue
        finding = column_finding(name, table[column])
        if finding is not None:
            findings.append(finding)
    return findings


def _one_line(text: str) -> str:
    return " ".join(text.split())


def identifier_error(file: str, finding: IdentifierFinding) -> SiteDataError:
    """The one-line refusal: the file, the column, why, and the ways out (drop the column from the
    file, list it under the modality's ``"drop"`` in ``site.json``, or, when the data manager vouches
    that it identifies no one, under ``"not_identifiers"``). Holds no cell value."""
    drop = json.dumps({"drop": [finding.column]})[1:-1]
    return SiteDataError(
        _one_line(str(file)),
        f"may identify patients: {_one_line(finding.reason)}. Remove the column from the file, or declare it "
        f"in site.json under this modality's {drop} so that it is dropped when the file is read "
        '("not_identifiers" keeps a column that identifies no one)',
        _one_line(finding.column),
    )
