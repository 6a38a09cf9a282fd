"""Identifier-like columns are refused before fitting: names, record numbers, dates, contacts, free text."""

from __future__ import annotations

import string

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlego.common.data.identifiers import (
    IdentifierFinding,
    identifier_columns,
    identifier_error,
    name_hints,
    name_words,
)

N = 40
FIRST = ["Jane", "John", "Mary", "Peter", "Anna", "Paul", "Lucy", "Mark"]
LAST = ["Doe", "Smith", "Miller", "Meier", "O'Neil", "Brown", "Keller", "Novak"]
NOTES = [
    "patient reports mild pain after the second cycle",
    "seen by Dr Keller, follow up in three weeks",
    "no complaints, wife called about the appointment",
    "started tamoxifen, tolerating well so far",
]


def ids(n: int = N) -> pd.Index:
    return pd.Index([f"p{i}" for i in range(n)], name="id")


def table(n: int = N, **columns: list[object]) -> pd.DataFrame:
    return pd.DataFrame(columns, index=ids(n))


def cycle(values: list[object], n: int = N) -> list[object]:
    return [values[i % len(values)] for i in range(n)]


def flagged(frame: pd.DataFrame) -> dict[str, IdentifierFinding]:
    return {f.column: f for f in identifier_columns(frame)}


POSITIVES: dict[str, tuple[list[object], str]] = {
    "full_name": ([f"{FIRST[i % 8]} {LAST[i // 8]}" for i in range(N)], "person names"),
    "who": ([f"{LAST[i % 8]}-P{i:04d}" for i in range(N)], "id codes"),
    "mrn_text": ([f"MRN{1000 + i}" for i in range(N)], "id codes"),
    "case": ([f"P-{i:06d}" for i in range(N)], "id codes"),
    "passport_no": ([f"AB{123456 + i}" for i in range(N)], "id codes"),
    "born": ([f"{1940 + i}-0{1 + i % 9}-{10 + i % 18}" for i in range(N)], "dates"),
    "dob": (
        cycle(["31/01/1980", "31.01.1980", "01-31-1980", "Jan 31 1980", "1980-01-31", "3 March 1975"]),
        "dates",
    ),
    "contact": ([f"+41 44 {100 + i} 45 67" for i in range(N)], "phone numbers"),
    "tel": ([f"(555) {100 + i}-4567" for i in range(N)], "phone numbers"),
    "reach": ([f"{FIRST[i % 8].lower()}.{i}@hospital.example.org" for i in range(N)], "e-mail"),
    "notes": (cycle(["no findings", "no findings", *NOTES]) + [f"{NOTES[0]} ({i})" for i in range(10)], "free text"),
    "code_word": ([f"xq{i}zz" for i in range(N)], "id codes"),
    "anything": ([f"{w}{i}" for i, w in enumerate(cycle(["alpha", "beta", "gamma"]))], "id codes"),
}


@pytest.mark.parametrize("column", sorted(POSITIVES))
def test_identifier_text_values_are_flagged(column: str) -> None:
    values, reason = POSITIVES[column]
    finding = flagged(table(len(values), **{column: values})).get(column)
    assert finding is not None, column
    assert reason in finding.reason
    assert finding.examples > 0
    assert not any(str(v) in finding.reason for v in values)


def test_names_in_lower_case_are_caught_by_uniqueness_or_name() -> None:
    names = [f"{FIRST[i % 8].lower()} {LAST[i // 8].lower()}" for i in range(N)]
    found = flagged(table(who=names, patient_name=names))
    assert "text unique per patient" in found["who"].reason
    assert "personal names" in found["patient_name"].reason


def test_name_hint_on_text_refuses_even_repeated_values() -> None:
    found = flagged(table(lastName=cycle(["Doe", "Smith"]), zip=cycle(["8001 Zurich", "3000 Bern"])))
    assert "personal names" in found["lastName"].reason
    assert "postal addresses" in found["zip"].reason


def test_free_text_notes_and_unique_text() -> None:
    notes = [f"{NOTES[i % 4]}, visit {i}" for i in range(N)]
    found = flagged(table(notes=notes, remark=[f"r{i}" for i in range(N)]))
    assert "free text" in found["notes"].reason
    assert found["remark"].reason.startswith("text unique per patient (40 of 40 values distinct)")


def test_numeric_ids_and_yyyymmdd_dates_with_name_hints() -> None:
    found = flagged(
        table(
            mrn=[100000.0 + 7 * i for i in range(N)],
            PhoneNumber=[41441234500.0 + i for i in range(N)],
            birth_date=[float(19500101 + 10000 * (i % 40) + 100 * (i % 12) + i % 28) for i in range(N)],
            dob_text=[str(19800101 + i) for i in range(N)],
        )
    )
    assert set(found) == {"mrn", "PhoneNumber", "birth_date", "dob_text"}
    assert "YYYYMMDD" in found["birth_date"].reason
    assert "record numbers" in found["mrn"].reason


def test_dates_by_name_use_pandas_parsing_but_not_small_numbers() -> None:
    written = cycle(["Thu, 31 Jan 1980", "Mon, 3 Mar 1975", "Fri, 1 Jun 1962"])
    small = cycle(["1", "2", "3", "unknown", "none"])
    found = flagged(table(admission_date=written, other=written, visit_date=small))
    assert "dates" in found["admission_date"].reason
    assert set(found) == {"admission_date"}


def test_datetime_dtype_is_flagged_as_dates() -> None:
    days = pd.to_datetime("1980-01-01") + pd.to_timedelta(np.arange(N) % 7, unit="D")
    assert "dates" in flagged(table(when=list(days)))["when"].reason


def test_clinical_columns_are_not_flagged() -> None:
    rng = np.random.default_rng(0)
    frame = table(
        sex=cycle(["M", "F", "F"]),
        stage=cycle(["I", "II", "III", "IV", None]),
        tnm=cycle(["T1N0M0", "T2N1M0", "T1N0M0", "T3N0M0", "T2N0M0", "T4N2M1"]),
        er=cycle(["ER+", "ER-", "ER+"]),
        grade=cycle(["grade 1", "grade 2", "grade 3"]),
        smoker=cycle(["yes", "no"]),
        histology=cycle(["Infiltrating Ductal Carcinoma", "Invasive Lobular Carcinoma, Not Otherwise Specified"]),
        subtype=cycle(["Usual Type", "Oncocytic Type", "Myxoid Type"]),
        admission_date=cycle(["yes", "no", "unknown"]),
        age=[float(30 + i) for i in range(N)],
        crp=rng.lognormal(size=N),
        n_admissions=[float(i) for i in range(N)],
        date_diff_days=[float(3 * i) for i in range(N)],
        birth_weight=rng.normal(3.4, 0.4, size=N),
        mrn_count=cycle([0.0, 1.0, 2.0]),
        empty=[None] * N,
    )
    assert identifier_columns(frame) == []


def test_small_tables_with_repeated_categories_pass() -> None:
    frame = table(6, stage=["I", "II", "I", "III", "II", "I"], tnm=["T1", "T2", "T1", "T2", "T3", "T1"])
    assert identifier_columns(frame) == []


def test_declared_safe_columns_are_skipped() -> None:
    frame = table(remark=[f"r{i}" for i in range(N)], dob=cycle(["1980-01-31"]))
    assert {f.column for f in identifier_columns(frame, declared_safe=["remark"])} == {"dob"}
    assert identifier_columns(frame, declared_safe={"remark", "dob"}) == []


def test_name_words_and_hints() -> None:
    assert name_words("dateOfBirth") == ["date", "of", "birth"]
    assert name_words("PatientID") == ["patient", "id"]
    assert name_hints("n_admissions") == set()
    assert name_hints("age") == set()
    assert name_hints("PatientName") == {"name"}
    assert name_hints("E-Mail") == {"email"}
    assert name_hints("date_diff_days") == {"date"}
    assert name_hints("update_time") == set()


def test_message_names_file_column_and_ways_out_but_no_values() -> None:
    for column, (values, _) in POSITIVES.items():
        [finding] = identifier_columns(table(len(values), **{column: values}))
        message = str(identifier_error("site/clinical.csv", finding))
        assert "\n" not in message
        assert "site/clinical.csv" in message and f"'{column}'" in message
        assert "drop" in message and f'"drop": ["{column}"]' in message
        assert not any(str(v) in message for v in values), column


def test_message_keeps_odd_column_names_on_one_line() -> None:
    message = str(identifier_error("a.csv", IdentifierFinding("first\nname", "reason", 3)))
    assert "\n" not in message and '["first\\nname"]' in message


WORDS = st.text(alphabet=string.ascii_letters + string.digits + "+-", min_size=1, max_size=5)
CLINICAL = ["M", "F", "yes", "no", "ER+", "ER-", "T1N0M0", "grade 2", "stage II", "Usual Type", "high", "low"]


@settings(max_examples=60, deadline=None)
@given(
    vocabulary=st.lists(st.one_of(st.sampled_from(CLINICAL), WORDS), min_size=1, max_size=5, unique=True),
    data=st.data(),
)
def test_low_cardinality_categoricals_are_never_flagged(vocabulary: list[str], data: st.DataObject) -> None:
    values = data.draw(st.lists(st.sampled_from(vocabulary), min_size=20, max_size=200))
    values += [None] * data.draw(st.integers(min_value=0, max_value=10))
    n = len(values)
    column = data.draw(st.sampled_from(["sex", "stage", "grade", "er_status", "smoker", "histology", "x"]))
    assert identifier_columns(table(n, **{column: values})) == []
