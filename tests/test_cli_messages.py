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


@pytest.mark.parametrize(
    ("old", "new", "key", "value"),
    [
        (["--scenario", "pbc"], ["--dataset", "pbc"], "dataset", "pbc"),
        (["--sites", "a", "b"], ["--site-folders", "a", "b"], "site-folders", None),
        (["--split", "x"], ["--data", "x"], "data", None),
    ],
)
def test_an_old_option_spelling_still_works_and_names_the_new_one(capsys, old, new, key, value):
    before, after = _parsed(old), _parsed(new)
    assert before[key] == after[key] and (value is None or before[key] == value)
    error = capsys.readouterr().err
    assert f"{old[0]} is deprecated and will be removed in the next release; use {new[0]}" in error


def test_a_sites_old_spellings_still_work_with_a_warning(capsys):
    from fedlego.cli import build_parser

    args = build_parser().parse_args(["site", "--superlink", "h:1", "--data-dir", "d", "--certs", "k"])
    assert str(args.data) == "d" and str(args.keys) == "k"
    error = capsys.readouterr().err
    assert "--data-dir is deprecated" in error and "use --data" in error and "use --keys" in error


def _options(parser, path=()):
    """Every (command path, option) of a parser and its sub-commands."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif action.option_strings or action.dest not in ("help",):
            yield path, action


def test_every_option_of_every_command_says_what_it_is():
    import argparse

    from fedlego.cli import build_parser

    silent = [
        f"fedlego {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
        for path, action in _options(build_parser())
        if not action.help and action.help != argparse.SUPPRESS and action.dest != "help"
    ]
    assert silent == []


def test_one_name_per_thing_across_commands():
    """A site folder is --data, several are --site-folders, the consortium folder is --certs and a
    hospital's own key folder is --keys, in every command that takes them."""
    import argparse

    from fedlego.cli import build_parser

    meaning = {}
    for _path, action in _options(build_parser()):
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        for option in action.option_strings:
            meaning.setdefault(option, set()).add(action.metavar or action.dest)
    assert "--data-dir" not in meaning and "--sites" not in meaning and "--scenario" not in meaning
    assert meaning["--keys"] == {"KEY_DIR"}
    assert not {"SITE_DIR", "KEY_DIR"} & meaning["--certs"]
