"""Messages a new user meets: a misspelt preprocessing option names the valid ones, an empty
model store says so."""

import pytest

from fedlego.cli import main
from fedlego.common.data.preprocess import make_preprocessor
from fedlego.common.model_store import STORE_ENV


@pytest.mark.parametrize(("kind", "option", "hint"), [("tabular", "log_transfrom", "log_transform")])
def test_an_unknown_preprocessing_option_names_the_valid_ones(kind, option, hint):
    with pytest.raises(ValueError, match=f"did you mean '{hint}'.*valid options: log_transform, max_categories"):
        make_preprocessor(kind, **{option: True})


def test_an_empty_model_store_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "store"))
    assert main(["models", "list"]) == 0
    assert "no encoder weights in the model store" in capsys.readouterr().out


def _parsed(argv):
    import argparse

    from fedlego.options import add_scenario_arguments, add_set_argument, config_overrides

    parser = argparse.ArgumentParser()
    add_scenario_arguments(parser)
    add_set_argument(parser)
    return config_overrides(parser.parse_args(argv))


def test_a_repeated_list_option_adds_up_and_commas_still_work_with_a_warning(capsys):
    assert _parsed(["--modalities", "a", "--modalities", "b", "c"])["modalities"] == "a,b,c"
    assert _parsed(["--modalities", "a,b"])["modalities"] == "a,b"
    assert "--modalities with commas is deprecated" in capsys.readouterr().err


def test_an_option_and_a_set_item_that_disagree_are_an_error():
    assert _parsed(["--paired-sites", "2", "--set", "paired-sites=2"])["paired-sites"] == 2
    with pytest.raises(ValueError, match="--paired-sites 1 and --set paired-sites=2 disagree"):
        _parsed(["--paired-sites", "1", "--set", "paired-sites=2"])
    with pytest.raises(ValueError, match="--modalities a and --set modalities=b disagree"):
        _parsed(["--modalities", "a", "--set", "modalities=b"])
