"""Block and model packages: round trips and every refusal of a bad package."""

import copy
import json

import numpy as np
import pytest
import torch

from fedlego.common.config import ModelConfig
from fedlego.common.lego import LatentContract, LegoFuse, LegoMerge
from fedlego.common.packaging import (
    PackageError,
    block_to_package,
    check_block_package,
    content_hash,
    fused_to_package,
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
EXAMPLES = {
    "omics": ("tabular", {"x": torch.randn(4, 12)}),
    "labs": (
        "timeseries",
        {
            "values": torch.randn(4, 3, 5),
            "observed": torch.ones(4, 3, 5),
            "times": torch.rand(4, 3),
            "mask": torch.ones(4, 3),
        },
    ),
    "slides": ("bags", {"x": torch.randn(4, 6, 7), "mask": torch.ones(4, 6)}),
    "scan": ("image", {"x": torch.randn(4, 1, 16, 16)}),
}


TABULAR_FIT = fitted("tabular", EXAMPLES["omics"][1])["fit"]
SERIES_FIT = fitted("timeseries", EXAMPLES["labs"][1])["fit"]


def trained_like_blocks():
    blocks = {}
    for modality, (kind, example) in EXAMPLES.items():
        block = build_block(modality, kind, example, TASK, CONFIG)
        with torch.no_grad():
            for p in block.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        block.n_samples = 10
        block.validation_score = 0.7
        block.preprocessing = fitted(kind, example)
        blocks[modality] = block.eval()
    return blocks


@pytest.fixture(scope="module")
def blocks():
    return trained_like_blocks()


@pytest.fixture(scope="module")
def packages(blocks):
    return {m: block_to_package(b, TASK, site=f"site-{m}", run_id="run-1") for m, b in blocks.items()}


def reparsed(package):
    return parse_block_package(serialize(package))


def test_block_round_trip_through_bytes_gives_the_same_predictions(blocks, packages):
    for modality, block in blocks.items():
        rebuilt = check_block_package(reparsed(packages[modality]), block.contract, TASK).eval()
        x = EXAMPLES[modality][1]
        torch.testing.assert_close(rebuilt(x), block(x))
        assert rebuilt.n_samples == 10 and rebuilt.validation_score == pytest.approx(0.7)
        assert rebuilt.preprocessing == block.preprocessing


def test_manifest_carries_no_patient_data(packages):
    package = packages["omics"]
    assert set(json.loads(package.architecture_json)) == {
        "encoder",
        "steps",
        "heads",
        "head_dim",
        "frequency",
        "direct",
        "dropout",
    }
    assert package.site == "site-omics" and package.run_id == "run-1" and len(package.content_hash) == 32


def test_serialisation_is_deterministic(packages):
    assert serialize(packages["labs"]) == serialize(reparsed(packages["labs"]))


def tampered(packages, mutate, rehash=True):
    package = reparsed(packages["omics"])
    mutate(package)
    if rehash:
        package.content_hash = content_hash(package)
    return package


def test_tampered_content_is_refused(packages):
    def flip(package):
        data = bytearray(package.tensors[0].data)
        data[0] ^= 0xFF
        package.tensors[0].data = bytes(data)

    with pytest.raises(PackageError, match="content hash does not match"):
        check_block_package(tampered(packages, flip, rehash=False))


def test_unknown_schema_version_is_refused(packages):
    with pytest.raises(PackageError, match="schema version 99 is not supported"):
        check_block_package(tampered(packages, lambda p: setattr(p, "schema_version", 99)))


def test_contract_mismatch_names_the_field(packages):
    with pytest.raises(PackageError, match="channels: expected 4, got 8"):
        check_block_package(reparsed(packages["omics"]), LatentContract(4, 16, 3, "survival", 0))


def test_task_mismatch_is_refused(packages):
    with pytest.raises(PackageError, match="task"):
        check_block_package(reparsed(packages["omics"]), task=SurvivalTask((5.0,)))


def test_wrong_shape_is_refused(packages):
    def reshape(package):
        package.tensors[0].shape[:] = [1, int(np.prod(package.tensors[0].shape))]

    with pytest.raises(PackageError, match="the architecture needs"):
        check_block_package(tampered(packages, reshape))


def test_truncated_tensor_data_is_refused(packages):
    def truncate(package):
        package.tensors[0].data = package.tensors[0].data[:-4]

    with pytest.raises(PackageError, match="declares shape"):
        check_block_package(tampered(packages, truncate))


def test_unsupported_dtype_is_refused(packages):
    with pytest.raises(PackageError, match="unsupported dtype"):
        check_block_package(tampered(packages, lambda p: setattr(p.tensors[0], "dtype", "object")))


def test_non_finite_values_are_refused(packages):
    def poison(package):
        array = np.frombuffer(package.tensors[-1].data, dtype="<f4").copy()
        array[0] = np.nan
        package.tensors[-1].data = array.tobytes()

    with pytest.raises(PackageError, match="non-finite"):
        check_block_package(tampered(packages, poison))


def test_a_shape_whose_element_count_overflows_int64_is_refused_not_raised(packages):
    def overflow(package):
        package.tensors[-1].ClearField("shape")
        package.tensors[-1].shape.extend([2**32, 2**32])  # 2**64 elements: 0 in int64 arithmetic
        package.tensors[-1].data = b""

    with pytest.raises(PackageError, match=r"declares shape \[4294967296, 4294967296\]"):
        check_block_package(tampered(packages, overflow))


@pytest.mark.parametrize(
    ("metrics", "message"),
    [({"validation_score": float("nan")}, "not a finite number"), ({"validation_score": 7.0}, "outside")],
)
def test_a_nan_or_impossible_validation_score_is_refused(packages, metrics, message):
    with pytest.raises(PackageError, match=f"metrics: .*{message}"):
        check_block_package(tampered(packages, lambda package: package.metrics.update(metrics)))


def test_a_site_leaves_an_unknown_validation_score_out_instead_of_sending_nan(blocks):
    block = copy.deepcopy(blocks["omics"])
    block.validation_score = float("nan")
    package = block_to_package(block, TASK, site="s", run_id="run-1", metrics={"validation_loss": float("nan")})
    assert "validation_score" not in package.metrics and "validation_loss" not in package.metrics
    check_block_package(package)


def test_oversized_package_is_refused(packages):
    with pytest.raises(PackageError, match="over the limit"):
        check_block_package(reparsed(packages["omics"]), max_bytes=1000)


def test_unknown_encoder_is_refused_not_imported(packages):
    def rename(package):
        architecture = json.loads(package.architecture_json)
        architecture["encoder"]["name"] = "os:system"
        package.architecture_json = json.dumps(architecture)

    with pytest.raises(PackageError, match="unknown encoder 'os:system'"):
        check_block_package(tampered(packages, rename))


def test_garbage_bytes_are_a_clear_error():
    with pytest.raises(PackageError, match="not a fedlego block package"):
        parse_block_package(b"\xff\xff\xff\xff not protobuf", "upload from site-x")


def test_merged_and_fused_packages_round_trip(blocks, packages):
    x = {m: example for m, (_, example) in EXAMPLES.items()}
    merged = LegoMerge(blocks, weighting="samples").eval()
    package = parse_model_package(serialize(merged_to_package(merged, packages, "run-1")))
    torch.testing.assert_close(model_from_package(package)(x), merged(x))
    fused = LegoFuse(blocks, "weave").eval()
    with torch.no_grad():
        fused.head.linear.bias.add_(1.0)
    package = parse_model_package(serialize(fused_to_package(fused, packages, "run-1")))
    torch.testing.assert_close(model_from_package(package)(x), fused(x))


def test_tampered_model_package_is_refused(blocks, packages):
    package = merged_to_package(LegoMerge(blocks), packages, "run-1")
    package.recipe_json = package.recipe_json.replace("slerp", "linear")
    with pytest.raises(PackageError, match="content hash"):
        model_from_package(package)


def test_a_merge_mode_fused_package_keeps_its_latent_merge_weights_and_anchor(blocks, packages):
    """Rebuilt with the recipe's latent merge and merge weights (not the defaults), the model gives
    the same outputs, and its anchor is still the merged weights."""
    x = {m: example for m, (_, example) in EXAMPLES.items()}
    weights = {m: float(i + 1) for i, m in enumerate(sorted(blocks))}
    fused = LegoFuse(blocks, "merge", latent_merge="mean", weighting=weights, anchor=0.3).eval()
    with torch.no_grad():
        next(p for n, p in fused.named_parameters() if n.endswith(".latent")).add_(0.5)
    package = parse_model_package(serialize(fused_to_package(fused, packages, "run-1")))
    rebuilt = model_from_package(package)
    assert isinstance(rebuilt, LegoFuse) and rebuilt.latent_merge == "mean" and rebuilt.weights == weights
    torch.testing.assert_close(rebuilt(x), fused(x))
    torch.testing.assert_close(rebuilt.anchor_penalty(), fused.anchor_penalty())
    assert float(rebuilt.anchor_penalty()) > 0


def _with_architecture(packages, **changes):
    def mutate(package):
        architecture = json.loads(package.architecture_json)
        for key, value in changes.items():
            if key == "example":
                architecture["encoder"]["example"] = value
            else:
                architecture[key] = value
        package.architecture_json = json.dumps(architecture)

    return tampered(packages, mutate)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 10**6}, "'steps' must be an integer in \\[1, 32\\], got 1000000"),
        ({"steps": "2"}, "'steps' must be an integer"),
        ({"heads": True}, "'heads' must be an integer"),
        ({"head_dim": 0}, "'head_dim' must be an integer"),
        ({"frequency": "yes"}, "'frequency' must be true or false"),
        ({"dropout": 1.5}, "'dropout' must be a number in \\[0, 1\\)"),
        ({"example": {"x": [10**5, 10**5]}}, "exceeds 50,000,000 values"),
        ({"example": {"x": [-3]}}, "shape must be a list of positive integers"),
        ({"example": {"x": "12"}}, "shape must be a list of positive integers"),
    ],
)
def test_absurd_architecture_fields_are_refused_before_building(packages, changes, message):
    with pytest.raises(PackageError, match=message):
        check_block_package(_with_architecture(packages, **changes))


def test_an_absurd_latent_contract_is_refused(packages):
    def widen(package):
        package.contract.channels = 10**6

    with pytest.raises(PackageError, match="latent contract field 'channels'"):
        check_block_package(tampered(packages, widen))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"kind": "tabular", "options": {}, "fit": {"mean": [float("nan")]}}, "non-finite number"),
        (
            {"kind": "tabular", "options": {}, "fit": {"categorical": [{"name": "c", "categories": ["x"] * 200_000}]}},
            "over the limit",
        ),
        ({"kind": "python", "options": {}, "fit": {}}, "with a kind in"),
        ({"kind": "tabular", "options": {}, "fit": {"numeric": {}, "categorical": []}}, "names must be a list"),
        (
            {
                "kind": "tabular",
                "options": {},
                "fit": {**TABULAR_FIT, "categorical": [{"name": "stage"}]},
            },
            r"categorical\[0\]\.categories must be a list",
        ),
        ({"kind": "bags", "options": {}, "fit": {"mean": [0.0, 1.0], "std": [1.0]}}, "holds 1 items, 2 expected"),
        ({"kind": "bags", "options": {}, "fit": {"mean": [0.0], "std": [0.0]}}, "not positive"),
        (
            {
                "kind": "timeseries",
                "options": {},
                "fit": {**SERIES_FIT, "log": [1]},
            },
            r"log\[0\] must be a str",
        ),
        ({"kind": "image", "options": {}, "fit": {"shape": [1, 10**9, 2], "mean": [0], "std": [1]}}, "three sizes"),
        ({"kind": "bags", "options": "all", "fit": {}}, "needs an 'options' object"),
    ],
)
def test_hostile_preprocessing_states_are_refused_before_any_site_applies_them(packages, state, message):
    def swap(package):
        package.preprocessing_json = json.dumps(state, allow_nan=True)

    with pytest.raises(PackageError, match=f"preprocessing_json: .*{message}"):
        check_block_package(tampered(packages, swap))


def test_a_state_producing_other_inputs_than_the_encoder_takes_is_refused(packages):
    def drop_column(package):
        state = json.loads(package.preprocessing_json)
        state["fit"]["categorical"] = []  # two inputs fewer: the encoder takes 12
        package.preprocessing_json = json.dumps(state)

    with pytest.raises(PackageError, match=r"input 'x' would be \[10\] per patient, the encoder takes \[12\]"):
        check_block_package(tampered(packages, drop_column))


@pytest.mark.parametrize("factor", [1000.0, 0.0])
def test_weights_far_from_any_trained_block_are_refused_by_norm(packages, factor):
    for package in packages.values():  # trained-like blocks of every kind pass
        check_block_package(reparsed(package), max_weight_ratio=10.0)

    def scale(package):
        for tensor in package.tensors:
            values = torch.frombuffer(bytearray(tensor.data), dtype=torch.float32) * factor
            tensor.data = values.numpy().tobytes()

    hostile = tampered(packages, scale)
    with pytest.raises(PackageError, match=r"times the L2 norm of the architecture freshly initialised"):
        check_block_package(hostile, max_weight_ratio=10.0)
    check_block_package(hostile, max_weight_ratio=0.0)  # 0: the check is off
