"""The benchmarks are an installed package with one command line, ``fedlego-bench``."""

from __future__ import annotations

import importlib

import pytest

from fedlego_bench.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_is_a_module_with_a_main(command):
    module = importlib.import_module(f"fedlego_bench.{command.replace('-', '_')}")
    assert callable(module.main) and module.__doc__


def test_without_a_known_command_it_lists_them_and_fails(capsys):
    assert main([]) == 2 and main(["no-such-page"]) == 2
    assert "panel" in capsys.readouterr().out
    assert main(["--help"]) == 0


def test_a_command_gets_its_own_arguments(capsys):
    with pytest.raises(SystemExit) as ended:
        main(["compare", "--help"])
    assert ended.value.code == 0 and "fedlego-bench compare" in capsys.readouterr().out
