"""One configuration: the Flower app's table cannot drift from the dataclasses, every key parses
and round-trips, bad keys and values are refused by name, and the commands share the keys."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from fedlego.cli import build_parser
from fedlego.common.config import SECTIONS, RunConfig, app_config_toml, flat_defaults, flat_fields
from fedlego.options import config_overrides

APP = Path(__file__).resolve().parents[1] / "fedlego" / "flwr_app" / "pyproject.toml"


def test_the_flower_app_config_has_every_key_with_its_default():
    table = tomllib.loads(APP.read_text())["tool"]["flwr"]["app"]["config"]
    assert table == flat_defaults()
    assert app_config_toml() in APP.read_text()  # regenerate with `fedlego config` after a change


def test_every_section_field_is_a_key_or_declared_internal():
    keyed = {(s.attribute, name) for s, name, _ in flat_fields().values()}
    for section in SECTIONS:
        for f in fields(section.kind):
            assert (section.attribute, f.name) in keyed or f.name in section.internal, (section.attribute, f.name)
    assert len(flat_fields()) == len({section.key(f.name) for section in SECTIONS for f in section.keyed_fields()})


def test_flat_keys_round_trip_and_the_seed_reaches_every_section():
    config = RunConfig.from_flat({"seed": 7, "steps": 1, "heads": 2, "encoder-width": 32, "frequency": "false"})
    assert (config.model.steps, config.model.heads, config.model.encoder_width) == (1, 2, 32)
    assert config.model.frequency is False
    assert config.model.seed == config.training.seed == config.fuse.seed == 7
    assert RunConfig.from_flat(config.to_flat()) == config
    assert RunConfig.from_flat({}) == RunConfig()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"stepz": 1}, "did you mean 'steps'"),
        ({"steps": "two"}, "'steps': cannot read 'two' as int"),
        ({"steps": 1.5}, "'steps'"),
        ({"frequency": "maybe"}, "'frequency'"),
        ({"fuse-mode": "braid"}, "fuse-mode must be one of"),
        ({"weighting": "votes"}, "weighting must be one of"),
        ({"heads": 0}, "heads must be at least 1"),
        ({"dropout": 1.0}, "dropout"),
        ({"fuse-dp-delta": 2.0}, "fuse-dp-delta"),
        ({"block-dp-epsilon": 3.0, "block-rounds": 2}, "block-rounds"),
        ({"fuse-inner-cv-below": -1}, "fuse-inner-cv-below must be at least 0"),
        ({"fuse-inner-folds": 1}, "fuse-inner-folds must be at least 2"),
    ],
)
def test_bad_keys_and_values_are_refused_by_name(values, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_flat(values)


def test_the_run_id_depends_on_the_settings_only():
    assert RunConfig().run_id() == RunConfig.from_flat({}).run_id()
    assert RunConfig().run_id() != RunConfig.from_flat({"steps": 1}).run_id()
    assert RunConfig.from_flat({"run-name": "trial-3"}).run_id() == "trial-3"


def test_centralized_has_an_option_for_every_model_and_training_key():
    args = build_parser().parse_args(
        ["centralized", "--out", "x", "--steps", "1", "--heads", "2", "--encoder-width", "32", "--epochs", "3",
         "--no-frequency", "--modalities", "rna", "cnv", "--set", "dropout=0.2"]
    )  # fmt: skip
    overrides = config_overrides(args)
    assert overrides == {
        "steps": 1, "heads": 2, "encoder-width": 32, "block-epochs": 3, "frequency": False,
        "modalities": "rna,cnv", "dropout": 0.2,
    }  # fmt: skip
    text = build_parser()._subparsers._group_actions[0].choices["centralized"].format_help()
    for key, (section, _, _) in flat_fields().items():
        if section.attribute in ("model", "training", "merge", "fuse", "privacy"):
            assert f"--{key}" in text


def test_simulate_takes_any_key_with_set():
    args = build_parser().parse_args(
        ["simulate", "--out", "x", "--dataset", "pbc", "--set", "steps=1", "--set", "heads=2",
         "--set", "encoder-width=32"]
    )  # fmt: skip
    config = RunConfig.from_flat(config_overrides(args))
    assert config.scenario.dataset == "pbc"
    assert (config.model.steps, config.model.heads, config.model.encoder_width) == (1, 2, 32)
