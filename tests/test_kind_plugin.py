"""A modality kind from a plugin (the example in plugins/fedlego-code-sequences): it reads, fits
its vocabulary under the disclosure threshold, builds blocks that keep the merge's properties,
travels in packages, is refused when tampered, and runs through `fedlego simulate --site-folders` and
`fedlego predict` like a built-in kind."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedlego.cli import main
from fedlego.common.config import ModelConfig
from fedlego.common.data import kinds
from fedlego.common.data.dataset import ModalityData
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.scenarios import SiteSpec
from fedlego.common.data.sitefolder import read_site_folder, write_site_folder
from fedlego.common.data.synthetic import SyntheticModality, make_synthetic
from fedlego.common.data.tensors import fit_preprocessors, make_tensor_set, task_for
from fedlego.common.disclosure import DisclosureError
from fedlego.common.encoders import PLUGINS, load_plugins
from fedlego.common.lego import LegoMerge
from fedlego.common.packaging import (
    PackageError,
    block_to_package,
    check_block_package,
    content_hash,
    parse_block_package,
    serialize,
)
from fedlego.common.workflow import build_block

MODALITIES = [
    SyntheticModality("clin", "tabular", 1.0, 0.1, 6),
    SyntheticModality("dx", "codes", 1.2, 0.2, 30, max_visits=6),
]
CONFIG = ModelConfig(latent_channels=8, latent_dim=16, heads=2, head_dim=8, encoder_width=16)


def codes(rows: list[tuple[str, float, str]]) -> ModalityData:
    return ModalityData("dx", "codes", "dx.csv", table=pd.DataFrame(rows, columns=["id", "time", "code"]))


def test_the_plugin_kind_and_its_encoder_load_through_their_entry_points():
    assert "codes" in kinds.kind_names() and kinds.kind_names()[:4] == ("tabular", "timeseries", "image", "bags")
    assert type(kinds.modality_kind("codes")).__name__ == "CodeSequenceKind"
    load_plugins()
    assert PLUGINS["code-sequence"].distribution == "fedlego-code-sequences"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,time\np1,3\n", r"columns \['code'\] missing"),
        ("id,time,code\np1,3,E11\np2,4,\n", r"missing code values.*\[2\]"),
        ("id,time,code\np1,three,E11\n", r"time must be a number.*\[1\]"),
        ("", "file is empty"),
    ],
)
def test_malformed_code_files_are_refused_naming_file_column_and_rows(tmp_path, text, message):
    path = tmp_path / "dx.csv"
    path.write_text(text)
    with pytest.raises(SiteDataError, match=message) as raised:
        kinds.modality_kind("codes").read(path, "dx")
    assert "dx.csv" in str(raised.value)


def test_the_vocabulary_holds_only_codes_of_enough_training_patients():
    data = codes([("a", 1, "E11"), ("b", 2, "E11"), ("b", 3, "I10"), ("c", 1, "RARE"), ("t", 1, "TESTONLY")])
    preprocessor = kinds.modality_kind("codes").preprocessor()
    assert preprocessor.fit(data, ["a", "b", "c"], min_cell=2).fitted["codes"] == ["E11"]
    assert preprocessor.fit(data, ["a", "b", "c"], min_cell=1).fitted["codes"] == ["E11", "I10", "RARE"]
    with pytest.raises(DisclosureError, match="min-cell = 5"):
        preprocessor.fit(data, ["a", "b", "c"], min_cell=5)


def test_recent_codes_become_ids_with_unknown_and_padding():
    data = codes([("a", 10, "E11"), ("a", 375.25, "NEW"), ("b", 5, "I10"), ("b", 1, "E11"), ("b", 9, "E11")])
    preprocessor = kinds.modality_kind("codes").preprocessor(max_length=2).fit(data, ["a", "b"])
    tensors, present = preprocessor.transform(data, ["a", "b", "nobody"])
    vocabulary = preprocessor.fitted["codes"]  # E11 (2 patients) before I10 and NEW
    assert vocabulary[0] == "E11" and present.tolist() == [True, True, False]
    e11, i10 = 2, 2 + vocabulary.index("I10")
    assert tensors["codes"].tolist() == [[e11, 2 + vocabulary.index("NEW")], [i10, e11], [0, 0]]
    assert tensors["codes"].dtype == torch.int64 and tensors["mask"].tolist() == [[1, 1], [1, 1], [0, 0]]
    assert tensors["times"][0].tolist() == pytest.approx([-1.0, 0.0])  # years before the last code
    state = copy.deepcopy(preprocessor.to_dict())
    state["fit"]["codes"] = ["E11"]
    unknown, _ = type(preprocessor).from_dict(state).transform(data, ["b"])
    assert unknown["codes"].tolist() == [[1, 2]]  # I10 is outside that vocabulary


@pytest.fixture(scope="module")
def blocks():
    dataset = make_synthetic(120, MODALITIES, seed=4)
    ids = dataset.patient_ids()
    preprocessors = fit_preprocessors(dataset, ids)
    data = make_tensor_set(dataset, preprocessors, ids)
    task = task_for(dataset.labels, ids)
    built = {}
    for modality in ("clin", "dx"):
        example = {k: v[:2] for k, v in data.inputs[modality].items()}
        block = build_block(modality, dataset.modalities[modality].kind, example, task, CONFIG)
        with torch.no_grad():
            for p in block.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        block.preprocessing = preprocessors[modality].to_dict()
        built[modality] = block.eval()
    return built, data, task


def test_a_codes_block_keeps_the_merge_properties(blocks):
    built, data, _ = blocks
    held = data.restrict(["dx"])
    x = {k: v[: len(held)] for k, v in held.inputs["dx"].items()}
    torch.testing.assert_close(LegoMerge([built["dx"]]).eval()({"dx": x}), built["dx"](x))
    merged = LegoMerge(built).eval()
    only_codes = merged({"clin": None, "dx": x})  # patients without the tabular modality
    assert only_codes.isfinite().all()
    both = data.restrict(["clin", "dx"])
    inputs = {m: both.inputs[m] for m in ("clin", "dx")}
    flipped = LegoMerge({"dx": built["dx"], "clin": built["clin"]}).eval()
    torch.testing.assert_close(merged(inputs), flipped(inputs))


def test_a_codes_block_travels_in_a_package_and_a_hostile_vocabulary_is_refused(blocks):
    built, data, task = blocks
    package = block_to_package(built["dx"], task, site="coder", run_id="run-1")
    rebuilt = check_block_package(parse_block_package(serialize(package)), built["dx"].contract, task).eval()
    x = data.restrict(["dx"]).inputs["dx"]
    torch.testing.assert_close(rebuilt(x), built["dx"](x))
    assert json.loads(package.architecture_json)["encoder"]["example"]["codes"]["dtype"] == "int64"
    for fit, message in (({"codes": [1, 2]}, "list of text codes"), ({"codes": ["E11", "E11"]}, "distinct codes")):
        hostile = parse_block_package(serialize(package))
        hostile.preprocessing_json = json.dumps({"kind": "codes", "options": {}, "fit": fit})
        hostile.content_hash = content_hash(hostile)
        with pytest.raises(PackageError, match=message):
            check_block_package(hostile)


def test_a_site_folder_naming_an_unknown_kind_says_which_kinds_exist(tmp_path):
    dataset = make_synthetic(30, MODALITIES, seed=1)
    folder = write_site_folder(dataset, SiteSpec("s", ["dx"], dataset.patient_ids()), None, tmp_path / "s")
    assert read_site_folder(folder).dataset.modalities["dx"].kind == "codes"
    manifest = json.loads((folder / "site.json").read_text())
    manifest["modalities"]["dx"]["kind"] = "genomes"
    (folder / "site.json").write_text(json.dumps(manifest))
    with pytest.raises(SiteDataError, match=r"modalities.dx.kind.*unknown modality kind 'genomes'.*'codes'"):
        read_site_folder(folder)


def test_simulate_and_predict_run_a_federation_with_the_plugin_kind(tmp_path: Path):
    dataset = make_synthetic(180, MODALITIES, seed=2)
    ids = dataset.patient_ids()
    holdings = {"paired": ["clin", "dx"], "clinic": ["clin"], "coder": ["dx"]}
    folders = [
        write_site_folder(dataset, SiteSpec(name, held, ids[k::3]), None, tmp_path / name)
        for k, (name, held) in enumerate(holdings.items())
    ]
    out = tmp_path / "run"
    small = ["latent-channels=8", "latent-dim=16", "block-epochs=3", "patience=2", "fuse-rounds=1", "min-cell=1"]
    args = ["simulate", "--site-folders", *map(str, folders), "--out", str(out), "--set", *small]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["merged_modalities"] == ["clin", "dx"]
    assert not results["refused"] and not results["failures"]
    predictions = tmp_path / "predictions.csv"
    args = ["predict", "--model", str(out / "packages" / "merged.pb"), "--data", str(folders[2])]
    assert main([*args, "--out", str(predictions), "--unverified"]) == 0
    frame = pd.read_csv(predictions)
    holding = set(ids[2::3]) & set(dataset.modalities["dx"].patient_ids())
    assert set(frame["modalities"]) == {"dx"} and set(frame["patient_id"]) == holding and frame["risk"].notna().all()
