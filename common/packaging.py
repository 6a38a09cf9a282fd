"""Block and model packages <-> protobuf bytes: building, hashing, checking, rebuilding.

The format is ``proto/fedlego.proto``. Packages carry weights and a manifest only, never code
(encoders are rebuilt from ``encoders.ENCODER_FACTORIES``) and never patient data. The content
hash is SHA-256 over the deterministic serialisation with the hash and signature cleared.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from google.protobuf.message import DecodeError

from fedlego.common.data.preprocess import preprocessor_from_dict, state_problem
from fedlego.common.encoders import DEFAULT_MAX_ENCODER_PARAMETERS, build_encoder, example_input
from fedlego.common.lego import LatentContract, LegoBlock, LegoFuse, LegoMerge
from fedlego.common.model_store import WeightsError, load_encoder_weights, load_from_store
from fedlego.common.tasks import Task, task_from_dict
from fedlego.proto import fedlego_pb2 as pb

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
DEFAULT_MAX_PACKAGE_BYTES = 256 * 1024 * 1024
ALLOWED_DTYPES = frozenset({"float32", "float64", "float16", "int64", "int32", "bool"})


class PackageError(ValueError):
    """A package that cannot be used, with the reason (and the site and modality when known)."""


def _tensor_to_proto(name: str, value: torch.Tensor) -> pb.Tensor:
    array = value.detach().cpu().contiguous().numpy()
    return pb.Tensor(
        name=name,
        dtype=str(array.dtype),
        shape=list(array.shape),
        data=array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(),
    )


MAX_TENSOR_DIMS = 16
"""The most dimensions a package's tensor may declare."""


def _tensor_from_proto(tensor: pb.Tensor, where: str) -> torch.Tensor:
    if tensor.dtype not in ALLOWED_DTYPES:
        raise PackageError(f"{where}: tensor {tensor.name!r} has unsupported dtype {tensor.dtype!r}")
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    expected = math.prod(int(d) for d in tensor.shape) * dtype.itemsize  # Python integers: no overflow
    if len(tensor.shape) > MAX_TENSOR_DIMS or any(d < 0 for d in tensor.shape) or len(tensor.data) != expected:
        raise PackageError(
            f"{where}: tensor {tensor.name!r} declares shape {list(tensor.shape)} ({tensor.dtype}) "
            f"= {expected} bytes but carries {len(tensor.data)}"
        )
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape)).astype(dtype.newbyteorder("="))
    return torch.from_numpy(array.copy())


def state_to_proto(state: Mapping[str, torch.Tensor]) -> list[pb.Tensor]:
    """A state dict as a list of protobuf tensors (in key order)."""
    return [_tensor_to_proto(name, value) for name, value in state.items()]


def state_from_proto(tensors, where: str) -> dict[str, torch.Tensor]:
    """Protobuf tensors back to a state dict, checking dtypes, sizes and duplicate names."""
    state: dict[str, torch.Tensor] = {}
    for tensor in tensors:
        if tensor.name in state:
            raise PackageError(f"{where}: tensor {tensor.name!r} appears twice")
        state[tensor.name] = _tensor_from_proto(tensor, where)
    return state


def content_hash(package: pb.BlockPackage | pb.ModelPackage) -> bytes:
    """SHA-256 of the package's deterministic serialisation without hash and signature."""
    copy = type(package)()
    copy.CopyFrom(package)
    copy.ClearField("content_hash")
    copy.ClearField("signature")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


def _contract_to_proto(contract: LatentContract) -> pb.LatentContract:
    return pb.LatentContract(**asdict(contract))


ARCHITECTURE_BOUNDS = {"steps": (1, 32), "heads": (1, 64), "head_dim": (1, 1024)}
"""Ranges of a block package's integer architecture fields, checked before anything is built."""
ARCHITECTURE_FIELDS = {
    "encoder",
    "frequency",
    "direct",
    "dropout",
    "frozen_encoder",
    "encoder_weights_sha256",
    *ARCHITECTURE_BOUNDS,
}
"""Every field a block package's architecture may hold."""
CONTRACT_BOUNDS = {"channels": (1, 4096), "dim": (1, 4096), "n_outputs": (1, 1024)}


def architecture_problem(architecture: Mapping[str, Any], contract: pb.LatentContract) -> str | None:
    """What is wrong with a block's architecture fields and latent contract (None if nothing):
    types and ranges, so that an absurd value is refused before anything is allocated."""
    unknown = sorted(set(architecture) - ARCHITECTURE_FIELDS)
    if unknown:
        return f"architecture fields {unknown} are unknown to this fedlego (known: {sorted(ARCHITECTURE_FIELDS)})"
    for name, (low, high) in ARCHITECTURE_BOUNDS.items():
        value = architecture.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"architecture field {name!r} must be an integer in [{low}, {high}], got {value!r}"
    encoder = architecture["encoder"]
    if not isinstance(encoder.get("name"), str) or not isinstance(encoder.get("kwargs", {}), dict):
        return "architecture field 'encoder' needs a text 'name' and an object 'kwargs'"
    if not isinstance(encoder.get("example"), dict) or not encoder["example"]:
        return "architecture field 'encoder.example' must be an object of input shapes"
    if not isinstance(architecture.get("frequency"), bool):
        return f"architecture field 'frequency' must be true or false, got {architecture.get('frequency')!r}"
    if not isinstance(architecture.get("direct", False), bool):
        return f"architecture field 'direct' must be true or false, got {architecture.get('direct')!r}"
    dropout = architecture.get("dropout")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        return f"architecture field 'dropout' must be a number in [0, 1), got {dropout!r}"
    for name, (low, high) in CONTRACT_BOUNDS.items():
        value = getattr(contract, name)
        if not low <= value <= high:
            return f"latent contract field {name!r} must lie in [{low}, {high}], got {value}"
    return None


def _contract_from_proto(contract: pb.LatentContract) -> LatentContract:
    return LatentContract(contract.channels, contract.dim, contract.n_outputs, contract.task, contract.seed)


def block_to_package(
    block: LegoBlock, task: Task, *, site: str, run_id: str, metrics: Mapping[str, float] | None = None
) -> pb.BlockPackage:
    """A site's block as a package (hash set, signature left empty)."""
    if block.encoder_spec is None:
        raise PackageError(
            f"block {block.modality!r} wraps an encoder without encoder_spec: register the encoder "
            "class with encoders.register_encoder and pass encoder_spec to LegoBlock"
        )
    architecture = {"encoder": block.encoder_spec, **block.hyperparameters}
    if not architecture["direct"]:  # the method's block: readable by versions before the direct path
        del architecture["direct"]
    if block.frozen_encoder:
        architecture["frozen_encoder"] = True
    if block.encoder_weights:  # by reference: the weights stay in every party's model store
        architecture["encoder_weights_sha256"] = block.encoder_weights
    metric_values = {k: float(v) for k, v in (metrics or {}).items()}
    if block.validation_score is not None:
        metric_values.setdefault("validation_score", float(block.validation_score))
    metric_values = {k: v for k, v in metric_values.items() if math.isfinite(v)}  # unknown: left out
    package = pb.BlockPackage(
        schema_version=SCHEMA_VERSION,
        modality=block.modality,
        site=site,
        run_id=run_id,
        architecture_json=json.dumps(architecture, sort_keys=True),
        contract=_contract_to_proto(block.contract),
        tensors=state_to_proto(block.adapter_state_dict() if block.encoder_weights else block.state_dict()),
        metrics=metric_values,
        n_samples=int(block.n_samples),
        preprocessing_json=json.dumps(block.preprocessing, sort_keys=True) if block.preprocessing else "",
        task_json=json.dumps(task.to_dict(), sort_keys=True),
    )
    package.content_hash = content_hash(package)
    return package


def _where(package: pb.BlockPackage) -> str:
    return f"block package of site {package.site or '?'!r}, modality {package.modality or '?'!r}"


MAX_JSON_CHARS = {"architecture_json": 256 * 1024, "task_json": 64 * 1024, "preprocessing_json": 8 * 1024 * 1024}
"""The longest text each JSON field of a block package may hold (the preprocessing state of a wide
omics table is the largest legitimate one)."""


def _json_field(package: pb.BlockPackage, field: str) -> Any:
    text = getattr(package, field)
    limit = MAX_JSON_CHARS.get(field, 64 * 1024)
    if len(text) > limit:
        raise PackageError(
            f"{_where(package)}: field {field} holds {len(text):,} characters, over the limit of {limit:,}"
        )
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError as error:
        raise PackageError(f"{_where(package)}: field {field} is not valid JSON ({error})") from error
    except RecursionError as error:
        raise PackageError(f"{_where(package)}: field {field} is nested too deeply") from error


def _float_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    squares = [t.double().square().sum() for t in tensors.values() if t.is_floating_point()]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def weight_ratio_problem(
    state: Mapping[str, torch.Tensor], initial: Mapping[str, torch.Tensor], limit: float
) -> str | None:
    """Why a block's weights are implausibly large or small against the same architecture freshly
    initialised (None when within ``limit`` times either way; ``limit`` 0: never)."""
    if limit <= 0:
        return None
    carried, fresh = _float_norm(state), _float_norm(initial)
    if not math.isfinite(carried):
        return "weights hold non-finite values"
    if fresh == 0.0:
        return None
    ratio = carried / fresh
    if not 1.0 / limit <= ratio <= limit:
        return (
            f"weights have {ratio:.3g} times the L2 norm of the architecture freshly initialised, outside "
            f"[1/{limit:g}, {limit:g}] (run-config key max-weight-ratio; trained blocks stay near 1)"
        )
    return None


def block_from_package(
    package: pb.BlockPackage,
    max_encoder_parameters: int = DEFAULT_MAX_ENCODER_PARAMETERS,
    max_weight_ratio: float = 0.0,
) -> LegoBlock:
    """Rebuild a block from its package; refuses unknown encoders, encoders over the parameter
    budget (counted before allocating), mismatching tensors and, with ``max_weight_ratio``,
    weights implausibly far in norm from the architecture's initialisation (``weight_ratio_problem``)."""
    where = _where(package)
    architecture = _json_field(package, "architecture_json")
    if not isinstance(architecture, dict) or not isinstance(architecture.get("encoder"), dict):
        raise PackageError(f"{where}: architecture_json has no encoder spec")
    problem = architecture_problem(architecture, package.contract)
    if problem is not None:
        raise PackageError(f"{where}: {problem}")
    block = _built_block(package, architecture, where, max_encoder_parameters)
    state = state_from_proto(package.tensors, where)
    expected = block.adapter_state_dict() if block.encoder_weights else block.state_dict()
    problem = _tensor_mismatch(state, expected) or weight_ratio_problem(state, expected, max_weight_ratio)
    if problem is not None:
        raise PackageError(f"{where}: {problem}")
    block.load_state_dict(state, strict=not block.encoder_weights)
    block.n_samples = int(package.n_samples)
    block.validation_score = package.metrics.get("validation_score")
    block.preprocessing = _json_field(package, "preprocessing_json")
    if block.preprocessing is not None:
        problem = state_problem(block.preprocessing) or input_mismatch(
            block.preprocessing, example_input(architecture["encoder"])
        )
        if problem is not None:
            raise PackageError(f"{where}: preprocessing_json: {problem}")
    return block


def _built_block(
    package: pb.BlockPackage, architecture: Mapping[str, Any], where: str, max_encoder_parameters: int
) -> LegoBlock:
    """The block the (checked) architecture describes, with its encoder weights by reference."""
    try:
        encoder = build_encoder(architecture["encoder"], max_encoder_parameters)
        block = LegoBlock(
            package.modality,
            encoder,
            _contract_from_proto(package.contract),
            example_input(architecture["encoder"]),
            steps=int(architecture["steps"]),
            heads=int(architecture["heads"]),
            head_dim=int(architecture["head_dim"]),
            frequency=bool(architecture["frequency"]),
            direct=bool(architecture.get("direct", False)),
            dropout=float(architecture["dropout"]),
            encoder_spec=architecture["encoder"],
        )
        by_reference = architecture.get("encoder_weights_sha256")
        if by_reference:
            load_encoder_weights(block.encoder, load_from_store(by_reference), f"{where}: encoder weights")
            block.encoder_weights = by_reference
        if architecture.get("frozen_encoder"):
            block.freeze_encoder()
    except WeightsError as error:
        raise PackageError(f"{where}: {error}") from error
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as error:
        raise PackageError(f"{where}: cannot rebuild the block from its architecture ({error})") from error
    return block


def _tensor_mismatch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str | None:
    """Why a package's tensors do not fit the architecture's (names, shapes, dtypes), or None."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        return f"tensors do not match the architecture (missing {missing[:5]}, unexpected {unexpected[:5]})"
    for name, value in state.items():
        if value.shape != expected[name].shape or value.dtype != expected[name].dtype:
            return (
                f"tensor {name!r} is {tuple(value.shape)} {value.dtype}, the "
                f"architecture needs {tuple(expected[name].shape)} {expected[name].dtype}"
            )
    return None


def input_mismatch(state: Mapping[str, Any], example: Mapping[str, torch.Tensor]) -> str | None:
    """Why a (schema-valid) preprocessing state would not produce the inputs the block's encoder
    takes (the tensors' names and per-patient sizes), or None; an unfitted state is not checked."""
    if state.get("fit") is None:
        return None
    try:
        described = preprocessor_from_dict(dict(state)).describe()
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as error:
        return f"cannot be read ({type(error).__name__}: {error})"
    if set(described) != set(example):
        return f"produces inputs {sorted(described)}, the encoder takes {sorted(example)}"
    for name, sizes in described.items():
        shape = list(example[name].shape[1:])
        if len(sizes) != len(shape) or any(
            size is not None and size != have for size, have in zip(sizes, shape, strict=True)
        ):
            return f"input {name!r} would be {sizes} per patient, the encoder takes {shape}"
    return None


def package_task(package: pb.BlockPackage) -> Task:
    """The task a block was trained for."""
    state = _json_field(package, "task_json")
    if not isinstance(state, dict):
        raise PackageError(f"{_where(package)}: task_json is missing")
    try:
        return task_from_dict(state)
    except ValueError as error:
        raise PackageError(f"{_where(package)}: task_json: {error}") from error


def check_block_package(
    package: pb.BlockPackage,
    contract: LatentContract | None = None,
    task: Task | None = None,
    max_bytes: int = DEFAULT_MAX_PACKAGE_BYTES,
    max_encoder_parameters: int = DEFAULT_MAX_ENCODER_PARAMETERS,
    max_weight_ratio: float = 0.0,
) -> LegoBlock:
    """Everything the coordinator checks before merging; returns the rebuilt block.

    Schema version, size, content hash, latent contract, task, tensor names/shapes/dtypes,
    finite values and (``max_weight_ratio``) the weights' norm. Raises ``PackageError`` with the
    first reason found."""
    where = _where(package)
    if package.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise PackageError(
            f"{where}: schema version {package.schema_version} is not supported "
            f"(this coordinator reads {sorted(SUPPORTED_SCHEMA_VERSIONS)})"
        )
    size = package.ByteSize()
    if size > max_bytes:
        raise PackageError(f"{where}: package is {size} bytes, over the limit of {max_bytes}")
    if package.content_hash != content_hash(package):
        raise PackageError(f"{where}: content hash does not match the content (tampered or corrupted)")
    if contract is not None:
        differences = contract.differences(_contract_from_proto(package.contract))
        if differences:
            raise PackageError(f"{where}: latent contract mismatch: {'; '.join(differences)}")
    if task is not None and package_task(package) != task:
        raise PackageError(f"{where}: task {package_task(package).to_dict()} differs from the run's {task.to_dict()}")
    problem = metrics_problem(package.metrics)
    if problem is not None:
        raise PackageError(f"{where}: metrics: {problem}")
    block = block_from_package(package, max_encoder_parameters, max_weight_ratio)
    for name, value in block.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise PackageError(f"{where}: tensor {name!r} holds non-finite values")
    return block


def metrics_problem(metrics: Mapping[str, float]) -> str | None:
    """Why a block's manifest metrics are unusable (a non-finite value; a validation score outside
    [0, 1], which would weigh or rank the block), or None."""
    for name, value in metrics.items():
        if not math.isfinite(value):
            return f"{name} is {value!r}, not a finite number"
    score = metrics.get("validation_score")
    if score is not None and not 0.0 <= score <= 1.0:
        return f"validation_score {score!r} lies outside [0, 1]"
    return None


def serialize(package: pb.BlockPackage | pb.ModelPackage) -> bytes:
    """Deterministic bytes of a package."""
    return package.SerializeToString(deterministic=True)


def _parse(package, data: bytes, source: str, kind: str):
    try:
        package.ParseFromString(bytes(data))
    except DecodeError as error:
        raise PackageError(f"{source}: not a fedlego {kind} package ({error})") from error
    return package


def parse_block_package(data: bytes, source: str = "package") -> pb.BlockPackage:
    """Bytes to a block package, with a clear error for garbage."""
    return _parse(pb.BlockPackage(), data, source, "block")


def parse_model_package(data: bytes, source: str = "package") -> pb.ModelPackage:
    """Bytes to a model package, with a clear error for garbage."""
    return _parse(pb.ModelPackage(), data, source, "model")


def merged_to_package(model: LegoMerge, blocks: Mapping[str, pb.BlockPackage], run_id: str) -> pb.ModelPackage:
    """A LegoMerge model as a package: its block packages, recipe and merged head."""
    recipe = {"latent_merge": model.latent_merge, "head_merge": model.head_merge, "weights": model.weights}
    return _model_package("merged", model.head.state_dict(), blocks, recipe, run_id, "head.")


def fused_to_package(model: LegoFuse, blocks: Mapping[str, pb.BlockPackage], run_id: str) -> pb.ModelPackage:
    """A LegoFuse model as a package: its block packages, recipe and the fine-tuned (trainable)
    parameters; everything frozen is rebuilt from the block packages."""
    recipe = {
        "mode": model.mode,
        "order": model.order,
        "freeze_encoders": model.freeze_encoders,
        "latent_merge": model.latent_merge,
        "weights": model.weights,
        "anchor": model.anchor,
    }
    return _model_package("fused", model.fusion_state_dict(), blocks, recipe, run_id, "")


def _model_package(kind, state, blocks, recipe, run_id, prefix) -> pb.ModelPackage:
    package = pb.ModelPackage(
        schema_version=SCHEMA_VERSION,
        kind=kind,
        run_id=run_id,
        blocks=[blocks[m] for m in sorted(blocks)],
        recipe_json=json.dumps(recipe, sort_keys=True),
        tensors=state_to_proto({prefix + k: v for k, v in state.items()}),
    )
    package.content_hash = content_hash(package)
    return package


def _model_from_recipe(
    kind: str, blocks: dict[str, LegoBlock], recipe: dict[str, Any], state: dict[str, torch.Tensor]
) -> LegoMerge | LegoFuse:
    """A merged or fused model from checked blocks, its recipe and its tensors."""
    if kind == "merged":
        model: LegoMerge | LegoFuse = LegoMerge(blocks, recipe["latent_merge"], recipe["head_merge"], recipe["weights"])
        model.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()})
        return model
    model = LegoFuse(
        blocks,
        recipe["mode"],
        order=recipe["order"],
        freeze_encoders=recipe["freeze_encoders"],
        latent_merge=recipe.get("latent_merge", "harmonic"),
        weighting=recipe.get("weights", "uniform"),
        anchor=recipe.get("anchor", 0.0),
    )
    expected = model.fusion_state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        raise PackageError("fusion parameters do not match the blocks and recipe")
    model.load_state_dict(state, strict=False)
    return model


def _recipe(package: pb.ModelPackage, where: str) -> dict[str, Any]:
    """The model package's recipe: a JSON object within the size limit."""
    if len(package.recipe_json) > MAX_JSON_CHARS.get("recipe_json", 64 * 1024):
        raise PackageError(f"{where}: recipe_json holds {len(package.recipe_json):,} characters, over the limit")
    try:
        recipe = json.loads(package.recipe_json)
    except (json.JSONDecodeError, RecursionError) as error:
        raise PackageError(f"{where}: recipe_json is not valid JSON ({type(error).__name__})") from error
    if not isinstance(recipe, dict):
        raise PackageError(f"{where}: recipe_json must be an object")
    return recipe


def model_from_package(package: pb.ModelPackage) -> LegoMerge | LegoFuse:
    """Rebuild a merged or fused model from its package (blocks checked as for a merge)."""
    where = f"{package.kind or 'model'} package of run {package.run_id!r}"
    if package.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
        raise PackageError(f"{where}: schema version {package.schema_version} is not supported")
    if package.content_hash != content_hash(package):
        raise PackageError(f"{where}: content hash does not match the content (tampered or corrupted)")
    blocks = {p.modality: check_block_package(p) for p in package.blocks}
    if not blocks:
        raise PackageError(f"{where}: holds no block")
    recipe = _recipe(package, where)
    state = state_from_proto(package.tensors, where)
    if package.kind not in ("merged", "fused"):
        raise PackageError(f"{where}: unknown model kind {package.kind!r}")
    try:
        model = _model_from_recipe(package.kind, blocks, recipe, state)
    except PackageError as error:
        raise PackageError(f"{where}: {error}") from error
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as error:
        raise PackageError(
            f"{where}: the recipe and tensors do not rebuild a {package.kind} model ({type(error).__name__}: {error})"
        ) from error
    weights = getattr(model, "weights", None)
    if isinstance(weights, Mapping) and not all(math.isfinite(w) and w > 0 for w in weights.values()):
        raise PackageError(f"{where}: merge weights must be positive finite numbers, got {weights}")
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in model.state_dict().values()):
        raise PackageError(f"{where}: the model holds non-finite values")
    return model.eval()
