"""The consortium schema end to end: `fedlego schema` writes it from reference folders, `fedlego check
--schema` and `fedlego site --schema` refuse a folder that breaks it, and the coordinator records its
hash and refuses a site that checked its data against another schema (or none)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fedlego.cli import main
from fedlego.common.config import RunConfig
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.schema import ConsortiumSchema, schema_hash
from fedlego.deploy import validate_site_folder
from fedlego.inprocess import InProcessTransport
from fedlego.server.orchestrator import Federation
from fedlego.server.report_summary import summary_section

from .test_disclosure import TINY, declare_dropped, hospital


@pytest.fixture(scope="module")
def consortium(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("consortium")
    for name, seed in (("north", 3), ("south", 4)):
        hospital(root / name, name, 100, 35, seed)
        declare_dropped(root / name)
    schema = ["schema", str(root / "north"), "--out", str(root / "schema.json"), "--outcome", "death from any cause"]
    assert main(schema) == 0
    return {"north": root / "north", "south": root / "south", "schema": root / "schema.json", "root": root}


def _changed(consortium: dict[str, Path], tmp_path: Path, change) -> Path:
    folder = tmp_path / "changed"
    shutil.copytree(consortium["south"], folder)
    change(folder)
    return folder


def _rename_sex(folder: Path) -> None:
    table = pd.read_csv(folder / "clinical.csv")
    table.rename(columns={"sex": "gender"}).to_csv(folder / "clinical.csv", index=False)


def _months(folder: Path) -> None:
    labels = pd.read_csv(folder / "labels.csv")
    labels["time"] = labels["time"] * 30.44
    labels.to_csv(folder / "labels.csv", index=False)


def test_the_schema_holds_no_patient_value(consortium):
    text = consortium["schema"].read_text()
    north = pd.read_csv(consortium["north"] / "labels.csv")
    assert f"{north['time'].max():.4f}" not in text and "Ward-Zeta" not in text and "patient_name" not in text
    assert json.loads(text)["modalities"]["clinical"]["columns"]["sex"]["categories"] == ["F", "M"]


def test_sites_of_the_consortium_pass_their_schema(consortium, capsys):
    assert main(["check", str(consortium["south"]), "--schema", str(consortium["schema"])]) == 0


@pytest.mark.parametrize(
    ("change", "column", "words"),
    [(_rename_sex, "sex", "'gender'"), (_months, "time", "months vs days")],
)
def test_check_and_site_refuse_a_folder_that_breaks_the_schema(consortium, tmp_path, capsys, change, column, words):
    folder = _changed(consortium, tmp_path, change)
    assert main(["check", str(folder), "--schema", str(consortium["schema"])]) == 2
    problems = [line for line in capsys.readouterr().err.splitlines() if "problem:" in line]
    assert any(f"column '{column}'" in line and words in line and "site 'south'" in line for line in problems)
    with pytest.raises(SiteDataError, match=column):
        validate_site_folder(folder, consortium["schema"])  # what `fedlego site --schema` runs first


def test_the_coordinator_records_the_schema_and_refuses_a_site_that_checked_another(consortium, tmp_path):
    other = ConsortiumSchema.read(consortium["schema"])
    other_path = tmp_path / "other.json"
    other.write(other_path)
    text = json.loads(other_path.read_text())
    text["modalities"]["clinical"]["columns"]["age"]["unit"] = "years"  # a different contract
    other_path.write_text(json.dumps(text))
    config = {"schema": str(consortium["schema"]), "block-rounds": 0, "fuse-rounds": 0}
    config |= {k: float(v) if "." in v else int(v) for k, v in (item.split("=") for item in TINY)}
    node_configs = {
        0: {"data-dir": str(consortium["north"]), "schema": str(consortium["schema"])},
        1: {"data-dir": str(consortium["south"]), "schema": str(other_path)},
    }
    transport = InProcessTransport(config, 2, node_configs=node_configs)
    results = Federation(transport, RunConfig.from_flat(config), log=lambda _: None).run()
    assert results.status == "completed"
    assert results.schema_sha256 == schema_hash(ConsortiumSchema.read(consortium["schema"]))
    assert results.outcome == "death from any cause"
    assert "The event: death from any cause." in summary_section(results)  # the report names it
    assert list(results.sites) == ["north"]
    [failure] = [f for f in results.failures if f.site == "south"]
    assert failure.phase == "describe" and "consortium schema" in failure.reason
