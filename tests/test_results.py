"""The typed run results (server/results.py): results.json round-trips to an equal RunResults, fields
that are None stay out of the JSON, and a file that is no results.json is a ValueError naming it."""

import json
import math

import pytest

from fedlego.console import federation_table
from fedlego.server.results import (
    RESULTS_NAME,
    BlockPrivacy,
    Failure,
    FusePrivacy,
    ModelMetrics,
    PhaseRecord,
    PrivacyRecord,
    Refusal,
    RoundsRecord,
    RunResults,
    Signatures,
    SiteMetric,
    Traffic,
)


def populated() -> RunResults:
    """A run with every section filled in: sites, traffic, metrics, rounds, privacy, problems."""
    return RunResults(
        run_id="run-0123456789ab",
        config={"dataset": "synthetic", "block-rounds": 1, "fuse-rounds": 2, "out-dir": "/tmp/run", "seed": 0},
        sites={
            "tabular_0": {"modalities": ["tabular"], "n_train": [40], "n_validation": [10], "n_test": [12]},
            "paired-0": {"modalities": ["tabular", "timeseries"], "n_train": [30, 30], "n_test": [8, 8]},
        },
        failures=[Failure(site="timeseries_1", phase="block", reason="no reply within 60 s")],
        refused=[Refusal(site="tabular_0", modality="tabular", reason="signature does not verify")],
        phases={
            "describe": PhaseRecord(seconds=0.25, bytes={"tabular_0": Traffic(sent=120, received=640)}),
            "block": PhaseRecord(
                seconds=3.5, bytes={"tabular_0": Traffic(10, 20_000), "paired-0": Traffic(12, 40_000)}
            ),
        },
        metrics={
            "merge": {
                "merge": ModelMetrics(
                    per_site={"tabular_0": SiteMetric(0.71, 12), "paired-0": SiteMetric(0.64, 8)},
                    weighted_mean=0.682,
                    n=20,
                    pooled=0.69,
                    pairs=61,
                ),
                "block:tabular_0": ModelMetrics(
                    per_site={"tabular_0": SiteMetric(0.7, 12)}, weighted_mean=0.7, n=12, pooled=0.7, pairs=40
                ),
            },
            "fuse": {
                "fuse": ModelMetrics(
                    per_site={"paired-0": SiteMetric(0.66, 8)}, weighted_mean=0.66, n=8, pooled=0.66, pairs=21
                )
            },
        },
        rounds={
            "block:tabular": RoundsRecord(validation_loss=[1.2, 1.1], kept_round=1, sites=["tabular_0", "paired-0"]),
            "fuse": RoundsRecord(
                validation_loss=[2.0, 1.8, 1.9],
                kept_round=1,
                participants=[["paired-0"], ["paired-0"]],
                trainable=1_000,
                total=5_000,
            ),
        },
        signatures=Signatures(required=True, models_signed=True),
        task={"kind": "survival", "cuts": [1.0, 2.0]},
        metric="c-index",
        audit_head="9f" * 32,
        merged_modalities=["tabular", "timeseries"],
        privacy=PrivacyRecord(
            blocks={
                "tabular": BlockPrivacy(site="tabular_0", epsilon=4.99, delta=1e-5, noise_multiplier=1.6, clip=1.0),
                "timeseries": BlockPrivacy(site="paired-0", epsilon=3.0),
            },
            fuse=FusePrivacy(
                sample_rates=[1.0, 0.5],
                clipped_updates=[0, 1],
                epsilon=4.7,
                delta=1e-5,
                noise_multiplier=1.0,
                clip=1.0,
                rounds=2,
            ),
        ),
        status="completed",
        resumed=1,
        wall_seconds=12.5,
        finished_at="2025-01-01T00:00:00+00:00",
    )


def test_a_populated_run_round_trips_through_json():
    original = populated()
    text = original.to_json()
    again = RunResults.from_json(text)
    assert again == original
    assert again.to_json() == text
    assert isinstance(again.privacy.blocks["tabular"], BlockPrivacy) and isinstance(again.privacy.fuse, FusePrivacy)
    assert isinstance(again.phases["block"].bytes["paired-0"], Traffic)
    assert isinstance(again.metrics["merge"]["merge"].per_site["paired-0"], SiteMetric)
    assert again.rounds["fuse"].participants == [["paired-0"], ["paired-0"]] and again.rounds["fuse"].sites is None
    assert again.failures == [Failure("timeseries_1", "block", "no reply within 60 s")]
    assert again.refused == [Refusal("tabular_0", "tabular", "signature does not verify")]


def test_the_json_spells_the_config_with_dashes_and_the_sections_as_written():
    document = json.loads(populated().to_json())
    assert document["config"]["block-rounds"] == 1 and document["config"]["out-dir"] == "/tmp/run"
    assert document["phases"]["block"]["bytes"]["paired-0"] == {"sent": 12, "received": 40_000}
    assert document["metrics"]["merge"]["merge"]["per_site"]["tabular_0"] == {"metric": 0.71, "n": 12}
    assert document["privacy"]["fuse"]["clipped_updates"] == [0, 1]
    assert document["refused"] == [{"site": "tabular_0", "modality": "tabular", "reason": "signature does not verify"}]


def test_fields_that_are_none_are_left_out_of_the_json():
    run = populated()
    run.error = None
    run.signatures = None
    run.privacy = PrivacyRecord()
    run.rounds["block:tabular"].trainable = None
    document = json.loads(run.to_json())
    assert "error" not in document and "signatures" not in document
    assert document["privacy"] == {}
    assert set(json.loads(populated().to_json())["privacy"]["blocks"]["timeseries"]) == {"site", "epsilon"}
    assert set(document["rounds"]["block:tabular"]) == {"validation_loss", "kept_round", "sites"}
    assert "participants" not in document["rounds"]["block:tabular"] and "sites" not in document["rounds"]["fuse"]
    assert RunResults.from_json(run.to_json()) == run

    bare = json.loads(RunResults(run_id="r", config={}).to_json())
    assert set(bare) == {
        "run_id",
        "config",
        "kind",
        "sites",
        "failures",
        "refused",
        "phases",
        "metrics",
        "rounds",
        "curves",
    }
    assert RunResults.from_dict(bare) == RunResults(run_id="r", config={})


def test_a_missing_metric_stays_nan_through_json():
    run = RunResults(run_id="r", config={}, metrics={"merge": {"merge": ModelMetrics()}})
    again = RunResults.from_json(run.to_json())
    assert math.isnan(again.metrics["merge"]["merge"].weighted_mean) and again.metrics["merge"]["merge"].n == 0


def test_read_takes_a_file_or_its_run_folder(tmp_path):
    run = populated()
    (tmp_path / RESULTS_NAME).write_text(run.to_json())
    assert RunResults.read(tmp_path / RESULTS_NAME) == run
    assert RunResults.read(tmp_path) == run


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{", id="truncated"),
        pytest.param("", id="empty"),
        pytest.param("not json at all", id="not-json"),
        pytest.param('{"config": {}}', id="no-run-id"),
        pytest.param('{"run_id": "r", "config": {}, "failures": [{"site": "a"}]}', id="incomplete-failure"),
        pytest.param(
            "[1, 2]",
            id="a-list",
        ),
        pytest.param(
            "null",
            id="null",
        ),
        pytest.param(
            '{"run_id": "r", "config": {}, "phases": {"block": 5}}',
            id="malformed-phase",
        ),
    ],
)
def test_reading_a_malformed_file_is_a_value_error_naming_it(tmp_path, text):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"broken\.json"):
        RunResults.read(path)


def test_the_console_table_says_when_fuse_kept_no_fine_tuning():
    metrics = {"fuse": {"fuse": ModelMetrics({"a": SiteMetric(0.7, 20)}, 0.7, 20)}}
    kept = RunResults(
        run_id="r", config={"fuse-mode": "merge"}, metrics=metrics, rounds={"fuse": RoundsRecord([1.0, 1.1], 0)}
    )
    assert "fuse kept round 0" in federation_table(kept) and "merge model as it started" in federation_table(kept)
    tuned = RunResults(run_id="r", config={}, metrics=metrics, rounds={"fuse": RoundsRecord([1.0, 0.9], 1)})
    assert "kept round 0" not in federation_table(tuned)


def test_the_console_table_warns_when_rounds_were_chosen_on_few_validation_events():
    metrics = {"fuse": {"fuse": ModelMetrics({"a": SiteMetric(0.7, 40)}, 0.7, 40)}}

    def table(events: list[int | None], kind: str = "survival") -> str:
        record = RoundsRecord([1.0, 0.9, 0.95], 1, validation_patients=[40, 40, 38], validation_events=events)
        return federation_table(
            RunResults(run_id="r", config={}, metrics=metrics, rounds={"fuse": record}, task={"kind": kind})
        )

    assert "chosen on fewer than 30 validation events: fuse kept round 1 of 2 (38 patients, 12 events)" in table(
        [14, 14, 12]
    )
    assert "fewer than 30 validation patients of the rarest class" in table([14, 14, 12], kind="binary")
    assert "chosen on" not in table([40, 40, 31])
    assert "chosen on" not in table([None, None, None])  # sites that do not say get no guess


def test_the_console_table_warns_about_sites_with_few_test_patients():
    few = {"merge": {"merge": ModelMetrics({"a": SiteMetric(0.5, 4), "b": SiteMetric(0.7, 60)}, 0.68, 64)}}
    table = federation_table(RunResults(run_id="r", config={}, metrics=few))
    assert "note: a evaluated on fewer than 20 test patients" in table
    many = {"merge": {"merge": ModelMetrics({"b": SiteMetric(0.7, 60)}, 0.7, 60)}}
    assert "fewer than" not in federation_table(RunResults(run_id="r", config={}, metrics=many))
