"""Versions: what a party runs, ``fedlego --version``, and the coordinator's mismatch rule."""

import pytest

from fedlego import __version__
from fedlego.cli import main
from fedlego.common.versions import software_versions, version_mismatch


def test_version_prints_fedlego_and_the_installed_plugins(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["--version"])
    assert exit_code.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"fedlego {__version__}")
    for name in software_versions():  # the example plugins are installed by `make setup`
        assert name in out.replace("\n", "")


@pytest.mark.parametrize(
    ("theirs", "expected"),
    [
        ({"fedlego": __version__}, None),
        ({"fedlego": __version__, "only-at-the-site": "2.0"}, None),  # a plugin the coordinator lacks
        ({"fedlego": "0.0.1"}, f"fedlego 0.0.1 at a, {__version__} at the coordinator"),
        ({"fedlego": __version__, "plug": "1.0"}, "plug 1.0 at a, 1.1 at the coordinator"),
        (None, "did not say its fedlego version"),
        ({}, "did not say its fedlego version"),
        ("fedlego 0.1.0", "malformed software field"),
        ({"fedlego": 1}, "malformed software field"),
        (["fedlego"], "malformed software field"),
    ],
)
def test_version_mismatch_names_the_site_and_both_versions(theirs, expected):
    problem = version_mismatch("a", theirs, {"fedlego": __version__, "plug": "1.1"})
    assert problem == expected if expected is None else expected in problem
