"""The registries own the names of their choices: the run configuration and the CLI read them from
the registries' source without importing torch, and both views agree."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedlego.common import aggregation, lego, merging
from fedlego.common.config import CHOICES, RunConfig
from fedlego.common.registry import Registry, registered_names

REGISTRIES = {
    "fuse-aggregation": (aggregation, "FUSE_AGGREGATIONS"),
    "round-aggregation": (aggregation, "ROUND_AGGREGATIONS"),
    "weighting": (aggregation, "WEIGHTINGS"),
    "fuse-mode": (lego, "FUSE_MODES"),
    "latent-merge": (merging, "LATENT_MERGES"),
    "head-merge": (merging, "HEAD_MERGES"),
}


@pytest.mark.parametrize("option", sorted(REGISTRIES))
def test_the_configuration_offers_exactly_what_the_registry_holds(option):
    module, name = REGISTRIES[option]
    registry = getattr(module, name)
    assert registry.option == option
    assert CHOICES[option] == registry.names() == registered_names(module.__name__.rsplit(".", 1)[1], name)


def test_reading_the_names_imports_no_torch():
    code = "import sys; from fedlego.common.config import CHOICES; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_registry_refuses_a_name_twice_and_names_its_choices_for_an_unknown_one():
    registry: Registry[int] = Registry("toy-choice")
    registry.register("a")(1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(2)
    with pytest.raises(ValueError, match="unknown toy choice 'b'; choose a"):
        registry["b"]


def test_an_unregistered_choice_is_refused_by_the_configuration():
    with pytest.raises(ValueError, match="latent-merge must be one of harmonic, mean, sum"):
        RunConfig.from_flat({"latent-merge": "geometric"})
