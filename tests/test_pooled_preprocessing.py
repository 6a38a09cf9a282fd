"""Preprocessing pooled from every site's released statistics (``shared-preprocessing = pooled``):
the pooled state equals the one fitted on all the sites' patients together where the statistics
allow it, refuses what cannot be pooled, travels in the protocol, and a federation's sites all
train their blocks with it."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from fedlego.client.simulated import simulated_site
from fedlego.common.config import RunConfig
from fedlego.common.data.dataset import ModalityData
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.pooling import pooled_moments
from fedlego.common.data.preprocess import make_preprocessor, pooled_state
from fedlego.common.data.tensors import task_for
from fedlego.common.packaging import parse_block_package
from fedlego.common.protocol import DescribeReply, DescribeRequest, Payload, ProtocolError, SiteDescription
from fedlego.messages import from_records, to_records
from fedlego.server.phases.describe import _unpoolable
from tests.test_federation import SMALL, run

RNG = np.random.default_rng(7)
PARTS = (slice(0, 40), slice(40, 150), slice(150, 300))


def _ids(n: int) -> list[str]:
    return [f"p{i}" for i in range(n)]


def _tabular() -> ModalityData:
    n = 300
    table = pd.DataFrame(
        {
            "age": RNG.normal(60, 12, n),
            "bili": RNG.exponential(2, n),
            "stage": RNG.choice(["I", "II", "III", "IV"], n, p=[0.4, 0.3, 0.2, 0.1]),
        },
        index=_ids(n),
    )
    return ModalityData("clinical", "tabular", "clinical.csv", table=table)


def _fit_parts(data: ModalityData, ids: list[str], kind: str, **options) -> tuple[list[dict], list[int], dict]:
    """States fitted on three disjoint parts of ``ids`` (min-cell 1), their sizes, and the state
    fitted on all of them."""
    states = [make_preprocessor(kind, **options).fit(data, ids[part]).to_dict() for part in PARTS]
    sizes = [len(ids[part]) for part in PARTS]
    return states, sizes, make_preprocessor(kind, **options).fit(data, ids).to_dict()


def test_pooled_moments_are_those_of_the_union_of_the_groups():
    groups = [RNG.normal(loc, scale, size) for loc, scale, size in ((0, 1, 30), (5, 2, 100), (-3, 0.5, 7))]
    mean, std = pooled_moments([[g.mean()] for g in groups], [[g.std()] for g in groups], [len(g) for g in groups])
    union = np.concatenate(groups)
    assert mean[0] == pytest.approx(union.mean()) and std[0] == pytest.approx(union.std())
    mean, std = pooled_moments([[1.0, None], [3.0, 4.0]], [[1.0, None], [1.0, 2.0]], [1, 1])
    assert mean == pytest.approx([2.0, 4.0]) and std == pytest.approx([math.sqrt(2.0), 2.0])  # absent: not counted
    with pytest.raises(ValueError, match="positive size"):
        pooled_moments([[1.0]], [[1.0]], [0])


def test_pooled_tabular_state_is_the_one_fitted_on_every_site_together():
    data = _tabular()
    states, sizes, whole = _fit_parts(data, _ids(300), "tabular", log_transform=["bili"])
    pooled = pooled_state(states, sizes)
    numeric, expected = pooled["fit"]["numeric"], whole["fit"]["numeric"]
    assert numeric["names"] == expected["names"] and numeric["log"] == [False, True]
    assert numeric["mean"] == pytest.approx(expected["mean"]) and numeric["std"] == pytest.approx(expected["std"])
    assert sorted(pooled["fit"]["categorical"][0]["categories"]) == ["I", "II", "III", "IV"]
    assert pooled["options"] == whole["options"]


def test_a_state_pooled_with_itself_comes_back_unchanged():
    data = _tabular()
    state = make_preprocessor("tabular", log_transform=True).fit(data, _ids(300), min_cell=10).to_dict()
    pooled = pooled_state([state, state], [30, 70])
    assert pooled["fit"]["categorical"] == state["fit"]["categorical"]  # same categories, same order
    for key in ("median", "mean", "std"):
        assert pooled["fit"]["numeric"][key] == pytest.approx(state["fit"]["numeric"][key])


def test_categories_kept_by_any_site_enter_the_pool_and_the_cap_holds():
    data = _tabular()
    small = make_preprocessor("tabular").fit(data, _ids(300)[:20], min_cell=10).to_dict()
    large = make_preprocessor("tabular").fit(data, _ids(300)[20:], min_cell=10).to_dict()
    assert len(small["fit"]["categorical"][0]["categories"]) < 4  # the small site folds its rare stages
    pooled = pooled_state([small, large], [20, 280])
    assert set(pooled["fit"]["categorical"][0]["categories"]) == set(large["fit"]["categorical"][0]["categories"])
    capped = [make_preprocessor("tabular", max_categories=2).fit(data, _ids(300)[part]).to_dict() for part in PARTS]
    assert len(pooled_state(capped, [40, 110, 150])["fit"]["categorical"][0]["categories"]) == 2


def test_pooled_time_series_image_and_bag_states_match_the_whole_fit():
    ids = _ids(300)
    long = pd.DataFrame(
        [(i, t, v, RNG.normal(t + k, 1 + k)) for i in ids for t in (0, 30) for k, v in enumerate(("alb", "plt"))],
        columns=["id", "time", "variable", "value"],
    )
    images = {i: RNG.integers(0, 255, (4, 4, 3), dtype=np.uint8) for i in ids}
    bags = {i: RNG.normal(size=(3, 5)) for i in ids}
    cases = [
        (ModalityData("labs", "timeseries", "labs.csv", table=long), "timeseries", ("mean", "std")),
        (ModalityData("slides", "image", "slides", arrays=images), "image", ("mean", "std")),
        (ModalityData("cells", "bags", "cells", arrays=bags), "bags", ("mean", "std")),
    ]
    for data, kind, keys in cases:
        states, sizes, whole = _fit_parts(data, ids, kind)
        pooled = pooled_state(states, sizes)
        for key in keys:
            assert pooled["fit"][key] == pytest.approx(whole["fit"][key]), (kind, key)


def test_what_cannot_be_pooled_is_refused():
    data = _tabular()
    ids = _ids(300)
    plain, logged = (make_preprocessor("tabular", log_transform=log).fit(data, ids).to_dict() for log in (False, True))
    assert pooled_state([plain, logged], [1, 1]) is None  # fitted with other options
    assert pooled_state([plain], [1]) is None  # nothing to pool
    assert pooled_state([plain, plain], [1, 0]) is None  # a weight of zero
    as_text = ModalityData("clinical", "tabular", "c.csv", table=data.table.assign(age=data.table["age"].map(str)))
    text_age = make_preprocessor("tabular").fit(as_text, ids).to_dict()
    assert pooled_state([plain, text_age], [1, 1]) is None  # numeric at one site, categorical at the other
    small = {i: np.zeros((4, 4), dtype=np.uint8) for i in ids}
    large = {i: np.zeros((8, 8), dtype=np.uint8) for i in ids}
    images = [
        make_preprocessor("image").fit(ModalityData("s", "image", "s", arrays=a), ids).to_dict() for a in (small, large)
    ]
    assert pooled_state(images, [1, 1]) is None  # other image shapes


def test_a_kind_without_a_pooling_rule_keeps_each_sites_own():
    from fedlego.common.data import kinds

    if "codes" not in kinds.kind_names():
        pytest.skip("the example kind plugin (plugins/fedlego-code-sequences) is not installed")
    table = pd.DataFrame({"id": ["a", "b", "c"], "time": [0.0, 1.0, 2.0], "code": ["x", "y", "x"]})
    data = ModalityData("dx", "codes", "dx.csv", table=table)
    state = kinds.modality_kind("codes").preprocessor().fit(data, ["a", "b", "c"]).to_dict()
    assert pooled_state([state, state], [1, 1]) is None


def test_the_statistics_travel_in_describe_and_are_checked():
    through = from_records(to_records(DescribeRequest({"clinical": {"log_transform": True}}).to_payload()))
    assert DescribeRequest.from_payload(through).preprocessing == {"clinical": {"log_transform": True}}
    assert DescribeRequest.from_payload(from_records(to_records(DescribeRequest().to_payload()))).preprocessing is None
    description = SiteDescription("a", "survival", 0, ["clinical"], ["tabular"], [50], [10], [10])
    state = make_preprocessor("tabular").fit(_tabular(), _ids(50)).to_dict()
    reply = DescribeReply.from_payload(
        from_records(to_records(DescribeReply(description, {"clinical": state}).to_payload()))
    )
    assert reply.preprocessing == {"clinical": state}
    bad = DescribeReply(description).to_payload()
    bad.config["preprocessing"] = json.dumps({"clinical": [1, 2]})
    with pytest.raises(ProtocolError, match="'preprocessing' must map modalities to objects"):
        DescribeReply.from_payload(Payload(config=bad.config))
    assert _unpoolable(description, "clinical", state, {}) is None
    assert "did not describe" in _unpoolable(description, "labs", state, {})
    series = {
        "kind": "timeseries",
        "options": {},
        "fit": {"variables": ["alb"], "log": [], "mean": [0.0], "std": [1.0]},
    }
    assert "timeseries state for tabular" in _unpoolable(description, "clinical", series, {})
    hostile = json.loads(json.dumps(state))
    hostile["fit"]["numeric"]["std"][0] = -1.0
    assert "not positive" in _unpoolable(description, "clinical", hostile, {})
    assert "not fitted" in _unpoolable(description, "clinical", {**state, "fit": None}, {})
    assert "other options" in _unpoolable(description, "clinical", state, {"log_transform": True})


POOLED = {**SMALL, "sites-per-modality": 2, "paired-sites": 0, "fuse-rounds": 0, "shared-preprocessing": "pooled"}


def test_every_site_trains_its_block_with_the_pooled_preprocessing(tmp_path):
    results, _ = run(POOLED, tmp_path)
    assert results["status"] == "completed"
    uploads = sorted((tmp_path / "packages" / "uploads").glob("*.pb"))
    by_modality: dict[str, set[str]] = {}
    for path in uploads:
        package = parse_block_package(path.read_bytes(), path.name)
        by_modality.setdefault(package.modality, set()).add(package.preprocessing_json)
    assert len(by_modality) == 2 and all(len(states) == 1 for states in by_modality.values())
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert sorted(e["modality"] for e in audit if e.get("event") == "preprocessing-pooled") == sorted(by_modality)


def test_a_site_uses_the_pooled_state_only_where_it_fits_and_says_why_not(capsys):
    settings = RunConfig.from_flat(POOLED)
    site = simulated_site(settings, 0)
    modality = site.modalities()[0]
    own = site.released_preprocessing()[0][modality]
    task = task_for(site.dataset.labels, site.roles["train"])

    def trained_with(pooled: dict) -> dict:
        results = site.train_blocks(task, settings.model, settings.training, "run", pooled={modality: pooled})
        return json.loads(results.packages[modality].preprocessing_json)

    shifted = json.loads(json.dumps(own))
    shifted["fit"]["numeric"]["mean"] = [m + 1.0 for m in own["fit"]["numeric"]["mean"]]
    assert trained_with(shifted) == shifted
    assert capsys.readouterr().err == ""
    other_options = {**shifted, "options": {**shifted["options"], "log_transform": True}}
    unknown_column = json.loads(json.dumps(shifted))
    unknown_column["fit"]["numeric"]["names"][0] = "not-a-column"
    for pooled, reason in ((other_options, "fitted with"), (unknown_column, "not-a-column")):
        assert trained_with(pooled) == own
        err = capsys.readouterr().err
        assert f"{modality}: not using the pooled preprocessing" in err and reason in err


def test_a_pooled_state_never_lets_a_site_train_a_block_its_own_disclosure_rules_forbid():
    settings = RunConfig.from_flat(POOLED)
    site = simulated_site(settings, 0)
    modality = site.modalities()[0]
    pooled = site.released_preprocessing()[0][modality]
    task = task_for(site.dataset.labels, site.roles["train"])
    site.min_cell = len(site.roles["train"]) + 1  # more than all its training patients
    results = site.train_blocks(task, settings.model, settings.training, "run", pooled={modality: pooled})
    assert modality not in results.packages and "min-cell" in results.errors[modality]


def test_a_site_never_trains_on_what_its_disclosure_control_would_not_use():
    ids = _ids(60)
    table = pd.DataFrame(
        {
            "ward": ["A"] * 45 + ["B"] * 14 + ["Rare-ward"],  # one patient: folded by the site's own fit
            "lab": [1.0] * 5 + [np.nan] * 55,  # observed in 5 patients: left out by it
            "grade": [1] * 50 + [2] * 7 + [3] * 3,  # coded: grades 2 and 3 count as missing at min-cell 10
            "age": RNG.normal(60, 10, 60),
        },
        index=ids,
    )
    data = ModalityData("clinical", "tabular", "clinical.csv", table=table)
    shared = make_preprocessor("tabular", max_categories=1).fit(data, ids, min_cell=1)  # another party's state
    shared.fitted["categorical"][0]["categories"] = ["A", "B", "Rare-ward"]
    kept = shared.withhold(data, ids, 10).table
    assert kept["ward"].isna().tolist() == [False] * 59 + [True]  # B is kept beyond the state's own cap
    assert kept["lab"].isna().all() and kept["grade"].isna().sum() == 10 and kept["age"].notna().all()
    x, _ = shared.transform(shared.withhold(data, ids, 10), ids)
    rare = len(shared.fitted["numeric"]["names"]) + 2
    assert x["x"][:, rare].abs().sum() == 0  # nobody has the rare ward's column set
    plain, _ = shared.transform(data, ids)
    assert plain["x"][59, rare] == 1  # without withholding the one patient would be its only source
    assert shared.withhold(data, ids, 1) is data  # min-cell 1: nothing withheld
    texts = ModalityData("clinical", "tabular", "c.csv", table=table.assign(age=["n/a", *table["age"][1:]]))
    with pytest.raises(SiteDataError, match="not a number"):  # a data error stays one
        shared.withhold(texts, ids, 10)

    long = pd.DataFrame(
        [(i, 0, "alb", 4.0) for i in ids] + [(i, 0, "rare-lab", 1.0) for i in ids[:3]],
        columns=["id", "time", "variable", "value"],
    )
    series = ModalityData("labs", "timeseries", "labs.csv", table=long)
    shared_series = make_preprocessor("timeseries").fit(series, ids, min_cell=1)
    assert set(shared_series.withhold(series, ids, 10).table["variable"]) == {"alb"}


def test_a_rare_code_becomes_unknown_whatever_vocabulary_the_state_holds():
    from fedlego.common.data import kinds

    if "codes" not in kinds.kind_names():
        pytest.skip("the example kind plugin (plugins/fedlego-code-sequences) is not installed")
    ids = _ids(20)
    table = pd.DataFrame(
        [(i, 0.0, "I10") for i in ids] + [(ids[0], 1.0, "B20")], columns=["id", "time", "code"]
    )  # B20: one patient
    data = ModalityData("dx", "codes", "dx.csv", table=table)
    shared = kinds.modality_kind("codes").preprocessor().fit(data, ids, 1)
    assert set(shared.fitted["codes"]) == {"I10", "B20"}
    tensors, _ = shared.transform(shared.withhold(data, ids, 10), ids[:1])
    plain, _ = shared.transform(data, ids[:1])
    assert tensors["codes"].tolist() != plain["codes"].tolist() and tensors["codes"][0, -1] == 1  # unknown


def test_every_round_and_block_trains_on_the_withheld_data_and_tests_on_all_of_it():
    settings = RunConfig.from_flat({**POOLED, "min-cell": 10})
    site = simulated_site(settings, 0)
    modality = site.modalities()[0]
    data = site.dataset.modalities[modality]
    shared = make_preprocessor(data.kind).fit(data, site.roles["train"], min_cell=1)
    withheld = shared.withhold(data, site._ids("train", modality), 10)
    assert site.trainable({modality: shared}).modalities[modality].table.equals(withheld.table)
    site.min_cell = len(site.roles["train"]) + 1  # its own rules now keep the modality out entirely
    assert site.trainable({modality: shared}).modalities[modality].patient_ids() == []


def test_a_description_whose_lists_do_not_fit_together_is_refused():
    description = SiteDescription("a", "survival", 0, ["clinical", "labs"], ["tabular"], [50, 40], [10, 5], [10, 5])
    payload = DescribeReply(description).to_payload()
    with pytest.raises(ProtocolError, match="'kinds' must be a list with one entry per modality"):
        DescribeReply.from_payload(payload)
    description.kinds, description.n_train = ["tabular", "timeseries"], [50, "forty"]
    with pytest.raises(ProtocolError, match="'n_train' must hold non-negative whole numbers"):
        DescribeReply.from_payload(DescribeReply(description).to_payload())
