"""Property-based fuzzing of block packages: whatever a hostile site puts into a package's JSON
fields, numbers or tensors (and re-hashes, so that the mutation reaches the deeper checks),
checking it returns a verdict (a rebuilt block or a ``PackageError``) and never escapes with
another exception; the unmutated package still passes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlego.common.config import ModelConfig
from fedlego.common.lego import LegoBlock, LegoMerge
from fedlego.common.packaging import (
    PackageError,
    block_from_package,
    block_to_package,
    check_block_package,
    content_hash,
    merged_to_package,
    model_from_package,
    parse_block_package,
    parse_model_package,
    serialize,
)
from fedlego.common.tasks import SurvivalTask
from fedlego.common.workflow import build_block
from tests.states import fitted

TASK = SurvivalTask((1.0, 2.0))
CONFIG = ModelConfig(latent_channels=8, latent_dim=16, encoder_width=16, head_dim=8)
JSON_FIELDS = ("architecture_json", "task_json", "preprocessing_json")


def _package(kind: str, example: dict[str, torch.Tensor]):
    block = build_block("m", kind, example, TASK, CONFIG)
    block.n_samples = 10
    block.preprocessing = fitted(kind, example)
    return serialize(block_to_package(block, TASK, site="site-a", run_id="run-1"))


VALID = {
    "tabular": _package("tabular", {"x": torch.randn(3, 6)}),
    "timeseries": _package(
        "timeseries",
        {
            "values": torch.randn(3, 2, 4),
            "observed": torch.ones(3, 2, 4),
            "times": torch.rand(3, 2),
            "mask": torch.ones(3, 2),
        },
    ),
}

hostile_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from([[10**6, 10**6], [-1], [], "os:system", 1e308]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()):
    """Every path to a value inside nested dicts and lists."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _replace(document, path, value, delete: bool):
    if not path:
        return value
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return document


def _damage_a_tensor(draw, package) -> None:
    """One of the package's tensors gets random bytes, an unusual dtype, or a random shape (up to
    products that overflow int64)."""
    tensor = package.tensors[draw(st.integers(min_value=0, max_value=len(package.tensors) - 1))]
    damage = draw(st.sampled_from(["bytes", "dtype", "shape"]))
    if damage == "bytes":
        tensor.data = draw(st.binary(max_size=64))
    elif damage == "dtype":
        tensor.dtype = draw(
            st.sampled_from(["float16", "float64", "int64", "bool", "complex64", "object", "<U8", "V4", "", "float32 "])
        )
    else:
        del tensor.shape[:]
        tensor.shape.extend(draw(st.lists(st.integers(min_value=0, max_value=2**40), max_size=4)))


@st.composite
def mutated_packages(draw):
    """A valid package with one JSON value replaced or deleted, a number changed, or a tensor's
    bytes or shape damaged; re-hashed."""
    package = parse_block_package(VALID[draw(st.sampled_from(sorted(VALID)))])
    kind = draw(st.sampled_from(["json", "json", "json", "nesting", "number", "metric", "tensor"]))
    if kind in ("json", "nesting"):
        field = draw(st.sampled_from(JSON_FIELDS))
        document = json.loads(getattr(package, field) or "null")
        if kind == "nesting":
            text = "[" * draw(st.integers(min_value=500, max_value=200_000)) + "]" * 3
        else:
            paths = list(_paths(document))
            path = draw(st.sampled_from(paths))
            document = _replace(document, path, draw(hostile_values), draw(st.booleans()))
            text = json.dumps(document, allow_nan=True)
        setattr(package, field, text)
    elif kind == "number":
        which = draw(st.sampled_from(["n_samples", "channels", "dim", "n_outputs", "schema_version"]))
        value = draw(st.integers(min_value=0, max_value=2**31 - 1))
        if which in ("n_samples", "schema_version"):
            setattr(package, which, value)
        else:
            setattr(package.contract, which, value)
    elif kind == "metric":
        key = draw(st.sampled_from(["validation_score", "validation_loss", "train_loss", "x"]))
        package.metrics[key] = draw(st.floats(allow_nan=True, allow_infinity=True))
    else:
        _damage_a_tensor(draw, package)
    package.content_hash = content_hash(package)
    return package


@pytest.mark.parametrize("kind", sorted(VALID))
def test_the_valid_packages_pass(kind):
    assert isinstance(check_block_package(parse_block_package(VALID[kind]), task=TASK), LegoBlock)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_packages())
def test_checking_a_mutated_package_always_returns_a_verdict(package):
    try:
        block = check_block_package(package, task=TASK)
    except PackageError:
        return
    assert isinstance(block, LegoBlock)  # a harmless mutation: the block still rebuilds and is finite
    assert all(torch.isfinite(v).all() for v in block.state_dict().values() if v.is_floating_point())
    assert math.isfinite(float(block.n_samples))
    score = block.validation_score
    assert score is None or 0.0 <= score <= 1.0


def _merged_package() -> bytes:
    blocks = {kind: block_from_package(parse_block_package(data)) for kind, data in VALID.items()}
    for kind, block in blocks.items():
        block.modality = kind
    packages = {kind: parse_block_package(data) for kind, data in VALID.items()}
    for kind, package in packages.items():
        package.modality = kind
        package.content_hash = content_hash(package)
    return serialize(merged_to_package(LegoMerge(blocks), packages, "run-1"))


MERGED = _merged_package()


@st.composite
def mutated_models(draw):
    """The valid merged package with its recipe, kind or a head tensor damaged; re-hashed."""
    package = parse_model_package(MERGED)
    kind = draw(st.sampled_from(["recipe", "recipe", "kind", "tensor"]))
    if kind == "recipe":
        recipe = json.loads(package.recipe_json)
        path = draw(st.sampled_from(list(_paths(recipe))))
        package.recipe_json = json.dumps(
            _replace(recipe, path, draw(hostile_values), draw(st.booleans())), allow_nan=True
        )
    elif kind == "kind":
        package.kind = draw(st.sampled_from(["fused", "", "merged\x00", "python"]))
    else:
        _damage_a_tensor(draw, package)
    package.content_hash = content_hash(package)
    return package


def test_the_valid_model_package_rebuilds():
    assert isinstance(model_from_package(parse_model_package(MERGED)), LegoMerge)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_models())
def test_rebuilding_a_mutated_model_package_always_returns_a_verdict(package):
    """What a site or `fedlego predict` does with a model file: a model or a PackageError."""
    try:
        model = model_from_package(package)
    except PackageError:
        return
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
