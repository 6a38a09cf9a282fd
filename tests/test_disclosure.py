"""Disclosure control: nothing that identifies a patient leaves a site.

A hospital export with names, record numbers, dates of birth, phone numbers, e-mail addresses and
free-text notes, a category held by one patient, a lab value measured in three patients and a
second hospital with three training events: `fedlego check` lists every problem at once; with the
columns declared dropped a real `fedlego simulate --site-folders` run completes and no byte of any
identifier, rare category, rare value or exact event time is in any file of the run folder.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlego.cli import main
from fedlego.client.runtime import SiteRuntime
from fedlego.common.data.dataset import Labels, ModalityData, MultimodalDataset
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.preprocess import make_preprocessor
from fedlego.common.data.sitefolder import read_site_folder
from fedlego.common.disclosure import DisclosureError, released_cut_points, round_significant
from fedlego.launcher import processes_with_home

IDENTIFIERS = ("patient_name", "mrn", "dob", "phone", "email", "notes")
TINY = ["latent-channels=8", "latent-dim=16", "block-epochs=2", "patience=1", "encoder-width=16"]
RARE_WARD = "Ward-Zeta-7"
RARE_LAB = 987.654321


def hospital(folder: Path, name: str, n: int, events: int, seed: int) -> dict[str, list]:
    """A hospital export as it often comes: identifiers next to the features. Returns the values
    that must never leave it."""
    rng = np.random.default_rng(seed)
    ids = [f"{name[:1].upper()}{k:04d}" for k in range(n)]
    first = ["Anna", "Bruno", "Clara", "Dario", "Elena", "Fabio", "Greta", "Hugo"]
    names = [f"{first[k % 8]} Smith-{name[:2]}{k:04d}" for k in range(n)]
    mrns = [f"MRN{seed}{k:05d}" for k in range(n)]
    dobs = [f"19{40 + k % 50:02d}-{1 + k % 12:02d}-{1 + k % 28:02d}" for k in range(n)]
    phones = [f"+41 44 {seed}{k:02d} {k % 90 + 10:02d} {k % 80 + 10:02d}" for k in range(n)]
    emails = [f"patient.{name}{k}@mail-{seed}.example.org" for k in range(n)]
    notes = [
        f"seen on ward {k % 5} after a fall at home, daughter {first[(k + 3) % 8]} visiting daily" for k in range(n)
    ]
    ward = [RARE_WARD if k == 0 else ["north", "south"][k % 2] for k in range(n)]
    lab = [RARE_LAB + k if k < 3 else np.nan for k in range(n)]
    age = rng.normal(60, 10, n).round(1)
    table = pd.DataFrame(
        {
            "id": ids,
            "age": age,
            "sex": rng.choice(["F", "M"], n),
            "ward": ward,
            "rare_lab": lab,
            "patient_name": names,
            "mrn": mrns,
            "dob": dobs,
            "phone": phones,
            "email": emails,
            "notes": notes,
        }
    )
    times = rng.uniform(50, 3000, n).round(4) + 0.1234
    event = np.zeros(n, dtype=int)
    event[rng.choice(n, events, replace=False)] = 1
    folder.mkdir(parents=True)
    table.to_csv(folder / "clinical.csv", index=False)
    pd.DataFrame({"id": ids, "time": times, "event": event}).to_csv(folder / "labels.csv", index=False)
    roles = ["train"] * int(0.6 * n) + ["validation"] * int(0.2 * n)
    roles += ["test"] * (n - len(roles))
    pd.DataFrame({"id": ids, "role": roles}).to_csv(folder / "split.csv", index=False)
    manifest = {
        "name": name,
        "task": "survival",
        "labels": "labels.csv",
        "modalities": {"clinical": {"kind": "tabular", "path": "clinical.csv"}},
    }
    (folder / "site.json").write_text(json.dumps(manifest))
    train_events = [float(t) for t, e, r in zip(times, event, roles, strict=True) if e and r == "train"]
    return {
        "names": names,
        "mrns": mrns,
        "dobs": dobs,
        "phones": phones,
        "emails": emails,
        "ids": ids,
        "notes": notes,
        "event_times": train_events,
    }


def declare_dropped(folder: Path) -> None:
    manifest = json.loads((folder / "site.json").read_text())
    manifest["modalities"]["clinical"]["drop"] = list(IDENTIFIERS)
    (folder / "site.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory) -> tuple[Path, Path, dict[str, list]]:
    root = tmp_path_factory.mktemp("hospitals")
    secrets_a = hospital(root / "hospital-a", "hospital-a", 120, 40, seed=1)
    secrets_b = hospital(root / "hospital-b", "hospital-b", 60, 5, seed=2)
    secrets = {k: secrets_a[k] + secrets_b[k] for k in secrets_a}
    secrets["site_b_event_times"] = secrets_b["event_times"]
    return root / "hospital-a", root / "hospital-b", secrets


def test_check_refuses_every_identifier_column_at_once(hospitals, capsys):
    a, b, _ = hospitals
    assert main(["check", str(a), str(b)]) == 2
    printed = capsys.readouterr().err
    for folder in (a, b):
        problems = [line for line in printed.splitlines() if "problem:" in line and str(folder) in line]
        flagged = {column for column in IDENTIFIERS if any(f"column '{column}'" in line for line in problems)}
        assert flagged == set(IDENTIFIERS), printed
        assert all("drop" in line for line in problems)
    assert "Smith" not in printed and "MRN" not in printed and "@" not in printed


def test_site_refuses_to_read_an_identifier_column(hospitals):
    a, _, _ = hospitals
    with pytest.raises(SiteDataError, match=r"column '(patient_name|mrn|dob|phone|email|notes)'.*drop"):
        read_site_folder(a)


def test_check_warns_of_few_events_and_rare_categories(hospitals, tmp_path, capsys):
    import shutil

    _, b, _ = hospitals
    copy = tmp_path / "b"
    shutil.copytree(b, copy)
    declare_dropped(copy)
    assert main(["check", str(copy), "--show-outgoing"]) == 0
    printed = capsys.readouterr().out
    assert "role train: fewer than min-cell = 10 events" in printed
    assert "column 'ward': categories held by fewer than min-cell = 10 training patients fold" in printed
    assert "column 'rare_lab': fewer than min-cell = 10 training patients hold a value" in printed
    outgoing = printed[printed.index("outgoing") :]
    assert RARE_WARD not in outgoing and "rare_lab" not in outgoing and "cut_points" not in outgoing
    assert '"north"' in outgoing and '"age"' in outgoing


def _forbidden(secrets: dict[str, list]) -> list[bytes]:
    """Every identifier and rare value as text, and the exact event times of the site with too few
    events as text and as float64/float32 bytes."""
    texts = [*secrets["names"], *secrets["mrns"], *secrets["dobs"], *secrets["phones"], *secrets["emails"]]
    texts += [note[:30] for note in secrets["notes"]] + [RARE_WARD, "rare_lab", f"{RARE_LAB:.4f}"]
    found = [t.encode() for t in texts]
    for time in secrets["site_b_event_times"]:
        found += [f"{time:.4f}".encode(), struct.pack("<d", time), struct.pack("<f", time)]
    return found


@pytest.mark.parametrize("shared", ["start-site", "pooled"])
def test_no_identifier_rare_value_or_exact_event_time_leaves_a_site(hospitals, tmp_path, capsys, shared):
    """A real simulated federation of the two hospitals (Flower's simulation engine, one process
    per site): every file of the run folder is searched byte by byte, with each site's own
    preprocessing and with the one pooled from both sites' statistics."""
    import shutil

    a, b, secrets = hospitals
    sites = []
    for folder in (a, b):
        sites.append(tmp_path / "sites" / folder.name)
        shutil.copytree(folder, sites[-1])
        declare_dropped(sites[-1])
    out = tmp_path / "run"
    code = main(
        [
            "simulate",
            "--site-folders",
            *map(str, sites),
            "--block-rounds",
            "1",
            "--fuse-rounds",
            "0",
            "--set",
            *TINY,
            f"shared-preprocessing={shared}",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["config"]["min-cell"] == 10
    assert (shared == "pooled") == ("preprocessing-pooled" in (out / "audit.jsonl").read_text())
    site_b = results["sites"]["hospital-b"]
    assert "n_train_events" not in site_b  # 5 events in 36 training patients: not sent
    files = [p for p in out.rglob("*") if p.is_file() and ".flower" not in p.parts]
    assert any(p.suffix == ".pb" for p in files)
    assert "Disclosure control: min-cell = 10." in (out / "report.html").read_text()
    forbidden = _forbidden(secrets)
    for path in files:
        content = path.read_bytes()
        leaked = [f for f in forbidden if f in content]
        assert not leaked, f"{path} holds {leaked[:3]}"
    assert processes_with_home(out.resolve() / ".flower" / "home") == []


# --------------------------------------------------------------------------- aggregates


def _small_table(draw_values: list[tuple[str, float | None]]) -> ModalityData:
    ids = [f"p{k}" for k in range(len(draw_values))]
    table = pd.DataFrame(
        {"cat": [c for c, _ in draw_values], "num": [v for _, v in draw_values]}, index=pd.Index(ids, name="id")
    )
    table["num"] = table["num"].astype(float)
    return ModalityData("clinical", "tabular", "clinical.csv", table=table)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d", "e", "f"]), st.none() | st.floats(-1e3, 1e3)),
        min_size=1,
        max_size=40,
    ),
    min_cell=st.integers(1, 15),
)
def test_every_aggregate_a_tabular_package_carries_rests_on_min_cell_patients(rows, min_cell):
    data = _small_table(rows)
    ids = list(data.table.index)
    if len(ids) < min_cell:
        with pytest.raises(SiteDataError, match="fewer than min-cell"):
            make_preprocessor("tabular").fit(data, ids, min_cell)
        return
    counts = data.table["cat"].value_counts()
    levels = data.table["num"].value_counts()
    # patients whose value may enter the statistics: every value of a column of many distinct values,
    # only the values held by min_cell patients in a coded column (10 distinct values at most)
    usable = levels.sum() if len(levels) > 10 or min_cell == 1 else levels[levels >= min_cell].sum()
    if counts.max() < min_cell and usable < min_cell:
        with pytest.raises(DisclosureError, match="no column is held by at least"):
            make_preprocessor("tabular").fit(data, ids, min_cell)
        return
    fit = make_preprocessor("tabular").fit(data, ids, min_cell).to_dict()["fit"]
    for column in fit["categorical"]:
        assert all(counts[c] >= min_cell for c in column["categories"])
    assert ("num" in fit["numeric"]["names"]) == (usable >= min_cell)


@settings(max_examples=40, deadline=None)
@given(
    observed=st.lists(st.tuples(st.integers(0, 29), st.sampled_from(["hb", "alb", "crp"])), min_size=1, max_size=80),
    min_cell=st.integers(1, 12),
)
def test_a_time_series_package_keeps_only_variables_of_min_cell_patients(observed, min_cell):
    table = pd.DataFrame(
        [(f"p{p}", float(k), v, float(k)) for k, (p, v) in enumerate(observed)],
        columns=["id", "time", "variable", "value"],
    )
    data = ModalityData("labs", "timeseries", "labs.csv", table=table)
    ids = sorted(table["id"].unique())
    patients = table.groupby("variable")["id"].nunique()
    if len(ids) < min_cell or patients.max() < min_cell:
        with pytest.raises(DisclosureError):
            make_preprocessor("timeseries").fit(data, ids, min_cell)
        return
    fit = make_preprocessor("timeseries").fit(data, ids, min_cell).to_dict()["fit"]
    assert set(fit["variables"]) == set(patients.index[patients >= min_cell])


def _runtime(n: int, events: int, min_cell: int = 10) -> SiteRuntime:
    ids = [f"p{k}" for k in range(n)]
    rng = np.random.default_rng(0)
    event = np.zeros(n, dtype=int)
    event[:events] = 1
    labels = Labels("survival", pd.DataFrame({"time": rng.uniform(1, 900, n), "event": event}, index=ids), "l.csv")
    table = pd.DataFrame({"x": rng.normal(size=n)}, index=pd.Index(ids, name="id"))
    dataset = MultimodalDataset("s", labels, {"m": ModalityData("m", "tabular", "m.csv", table=table)})
    return SiteRuntime("s", dataset, {"train": ids, "validation": [], "test": []}, min_cell=min_cell)


def test_a_site_sends_time_quantiles_only_with_min_cell_events_and_rounded():
    assert _runtime(40, 9).describe().cut_points is None
    assert _runtime(40, 9).describe().n_train_events is None
    description = _runtime(40, 12).describe()
    assert description.n_train_events == 12 and description.cut_points
    assert description.cut_points == released_cut_points(description.cut_points)
    assert all(round_significant(c) == c for c in description.cut_points)


def test_a_modality_under_min_cell_training_patients_fails_naming_site_modality_and_threshold():
    from fedlego.common.config import ModelConfig, TrainConfig
    from fedlego.common.tasks import SurvivalTask

    site = _runtime(8, 4)
    assert site.describe().n_train == [0]
    results = site.train_blocks(SurvivalTask((100.0, 300.0)), ModelConfig(), TrainConfig(epochs=1), "run")
    assert not results.packages
    assert "site 's'" in results.errors["m"] and "modality 'm'" in results.errors["m"]
    assert "min-cell = 10" in results.errors["m"] and " 8 " not in results.errors["m"]


def test_round_significant():
    assert round_significant(393.5147) == 390.0
    assert round_significant(0.012345) == 0.012
    assert released_cut_points([101.0, 104.0, 250.0]) == [100.0, 250.0]


def test_a_data_error_reaches_the_coordinator_without_ids_or_values(capsys):
    from fedlego.client.runtime import outgoing_reason

    error = SiteDataError("/data/st-mary/clinical.csv", "non-numeric values ('7,2 mmol')", "creatinine", ["P00017"])
    reason = outgoing_reason(error)
    assert "clinical.csv" in reason and "creatinine" in reason
    assert "P00017" not in reason and "7,2" not in reason and "/data/st-mary" not in reason
    assert "P00017" in capsys.readouterr().err  # the whole error stays in the site's own log
    refusal = DisclosureError("clinical.csv", "modality 'clinical': fewer than min-cell = 10 training patients hold it")
    assert "min-cell = 10" in outgoing_reason(refusal)


def test_a_rare_value_of_a_coded_numeric_column_is_not_given_away_by_its_mean():
    """A 0/1 flag held by 2 of 40 patients: its mean times n would tell the count; the rare value
    counts as missing instead. An odd count's median (one patient's exact age) is rounded."""
    ids = [f"p{k}" for k in range(40)]
    flag = [1.0 if k < 2 else 0.0 for k in range(40)]
    age = [40.0 + 1.37 * k for k in range(39)] + [np.nan]
    table = pd.DataFrame({"flag": flag, "age": age}, index=pd.Index(ids, name="id"))
    data = ModalityData("clinical", "tabular", "clinical.csv", table=table)
    fit = make_preprocessor("tabular").fit(data, ids, 10).to_dict()["fit"]["numeric"]
    flag_at, age_at = fit["names"].index("flag"), fit["names"].index("age")
    assert fit["mean"][flag_at] == 0.0 and fit["std"][flag_at] == 1.0
    assert fit["median"][age_at] == round_significant(float(np.nanmedian(age))) != float(np.nanmedian(age))
    plain = make_preprocessor("tabular").fit(data, ids, 1).to_dict()["fit"]["numeric"]
    assert plain["mean"][flag_at] == pytest.approx(2 / 40)  # what min-cell = 1 would have sent


def test_rounds_and_evaluations_of_a_small_site_send_nothing_about_its_patients():
    from fedlego.common.config import ModelConfig, TrainConfig
    from fedlego.common.tasks import SurvivalTask

    site = _runtime(60, 30, min_cell=1)
    site.roles = {"train": site.roles["train"][:40], "validation": site.roles["train"][40:48], "test": []}
    task = SurvivalTask((300.0, 600.0))
    config = ModelConfig(latent_channels=8, latent_dim=16, encoder_width=16)
    block = site.train_blocks(task, config, TrainConfig(epochs=1), "run").packages["m"]
    from fedlego.common.packaging import block_from_package

    site.min_cell = 10
    reply = site.block_round(block_from_package(block), task, TrainConfig(epochs=1))
    assert np.isnan(reply.validation_loss_before) and reply.n_validation == 0 and reply.validation_events is None
    site.roles["test"], site.roles["validation"] = site.roles["validation"], []
    assert site.evaluate({"block:m": block_from_package(block)}, task) == {}
    site.roles["train"] = site.roles["train"][:6]
    with pytest.raises(DisclosureError, match="fewer than min-cell = 10 training patients"):
        site.block_round(block_from_package(block), task, TrainConfig(epochs=1))


def test_a_site_json_floor_is_only_ever_raised(tmp_path):
    folder = tmp_path / "h"
    hospital(folder, "h", 60, 20, 5)
    declare_dropped(folder)
    manifest = json.loads((folder / "site.json").read_text())
    (folder / "site.json").write_text(json.dumps({**manifest, "min_cell": 25}))
    data = read_site_folder(folder)
    assert data.min_cell == 25
    assert SiteRuntime.from_site_data(data, 10).min_cell == 25
    assert SiteRuntime.from_site_data(data, 40).min_cell == 40
    (folder / "site.json").write_text(json.dumps({**manifest, "min_cell": 0}))
    with pytest.raises(SiteDataError, match="min_cell"):
        read_site_folder(folder)
