"""The site-coordinator protocol: message types, one typed request and reply per phase, and the
plain payloads they travel as (``fedlego.messages`` maps payloads to Flower records).

Every request and reply carries ``PROTOCOL_VERSION``; a party that receives another version
refuses the message with a :class:`ProtocolError` saying which versions differ. Everything a site
needs for a phase travels in the request (task, architecture, training settings): a site's own run
config only says where its data are.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import torch

from fedlego.common.concordance import PAIR_COUNT_KEYS, PAIR_SUM_KEYS
from fedlego.common.config import ModelConfig, PrivacyConfig, TrainConfig
from fedlego.common.outcome_curves import curve_problem
from fedlego.common.tasks import Task, task_from_dict

PROTOCOL_VERSION = 1
VERSION_KEY = "protocol"


class ProtocolError(ValueError):
    """A message that does not follow this protocol (version, missing or malformed field)."""


class MessageType(StrEnum):
    """Flower message types of the phases (``category.action``)."""

    DESCRIBE = "query.describe"
    BLOCK = "train.block"
    BLOCK_ROUND = "train.blockround"
    FUSE_ROUND = "train.fuse"
    EVALUATE = "evaluate.models"

    @property
    def action(self) -> str:
        """The ClientApp handler name (``@app.train(action)``)."""
        return self.value.split(".", 1)[1]


@dataclass
class Payload:
    """One message's content: plain values, optional tensors and metrics."""

    config: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, torch.Tensor] | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def payload_bytes(payload: Payload) -> int:
    """Size of a payload's content: bytes and strings by length, numbers 8 bytes, tensors by size."""

    def size(value: Any) -> int:
        if isinstance(value, bytes | str):
            return len(value)
        if isinstance(value, list):
            return sum(size(v) for v in value)
        return 8

    total = sum(len(k) + size(v) for k, v in payload.config.items())
    total += sum(len(k) + 8 for k in payload.metrics)
    if payload.arrays:
        total += sum(len(k) + t.numel() * t.element_size() for k, t in payload.arrays.items())
    return total


def _versioned(config: dict[str, Any]) -> dict[str, Any]:
    return {VERSION_KEY: PROTOCOL_VERSION, **config}


def _field(payload: Payload, key: str, what: str) -> Any:
    """A config entry of a payload after checking its protocol version."""
    version = payload.config.get(VERSION_KEY)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{what}: protocol version {version!r}, this fedlego speaks {PROTOCOL_VERSION}: "
            "the coordinator and every site must run compatible fedlego versions"
        )
    if key not in payload.config:
        raise ProtocolError(f"{what}: field {key!r} missing")
    return payload.config[key]


def _json(payload: Payload, key: str, what: str) -> Any:
    try:
        return json.loads(_field(payload, key, what))
    except (TypeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"{what}: field {key!r} is not valid JSON ({error})") from error


def _task(payload: Payload, what: str) -> Task:
    try:
        return task_from_dict(_json(payload, "task", what))
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"{what}: field 'task' is not a task ({error})") from error


def _config(kind: type, payload: Payload, key: str, what: str) -> Any:
    try:
        return kind(**_json(payload, key, what))
    except TypeError as error:
        raise ProtocolError(f"{what}: field {key!r} is not a {kind.__name__} ({error})") from error


@dataclass
class SiteDescription:
    """What a site holds, in counts only (never patient data or ids); for survival also the
    quantiles of its own training event times, from which the coordinator fixes common bins."""

    site: str
    task: str
    n_classes: int
    modalities: list[str]
    kinds: list[str]
    n_train: list[int]
    n_validation: list[int]
    n_test: list[int]
    n_train_events: int | None = None
    cut_points: list[float] | None = None
    data: dict[str, str] | None = None
    """Where the site's data came from: a site folder (name, path, SHA-256 of its files) or a
    bundled data set."""
    schema_sha256: str | None = None
    """The SHA-256 of the consortium schema the site checked its data against (None: none)."""
    software: dict[str, str] | None = None
    """The fedlego and plugin versions the site runs (``fedlego.common.versions``)."""
    time_unit: str | None = None
    """Survival: the unit of the site's times (site.json or the consortium schema; None: not stated)."""

    def to_dict(self) -> dict[str, Any]:
        """The description as JSON-ready values (absent survival fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def problem(self) -> str | None:
        """Why the description's modality lists do not fit together (names and kinds as text,
        counts as non-negative whole numbers, one of each per modality), or None."""
        if not isinstance(self.site, str) or not isinstance(self.modalities, list):
            return "'site' must be text and 'modalities' a list"
        for key in ("modalities", "kinds", "n_train", "n_validation", "n_test"):
            values = getattr(self, key)
            whole = key.startswith("n_")
            if not isinstance(values, list) or len(values) != len(self.modalities):
                return f"{key!r} must be a list with one entry per modality"
            if whole and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
                return f"{key!r} must hold non-negative whole numbers"
            if not whole and not all(isinstance(v, str) for v in values):
                return f"{key!r} must hold text"
        return None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SiteDescription:
        """Inverse of ``to_dict``."""
        return cls(**values)


@dataclass
class DescribeRequest:
    """Phase describe: tell what you hold. With ``preprocessing`` (the run's preprocessing options
    per modality), also send the preprocessing each of your blocks would carry, fitted on your
    training patients with them, so that the coordinator can pool them before blocks are trained."""

    message_type: ClassVar[MessageType] = MessageType.DESCRIBE
    preprocessing: dict[str, dict[str, Any]] | None = None

    def to_payload(self) -> Payload:
        config = {} if self.preprocessing is None else {"preprocessing": json.dumps(self.preprocessing)}
        return Payload(config=_versioned(config))

    @classmethod
    def from_payload(cls, payload: Payload) -> DescribeRequest:
        what = "describe request"
        _field(payload, VERSION_KEY, what)
        if "preprocessing" not in payload.config:
            return cls()
        return cls(_mapping_of_objects(_json(payload, "preprocessing", what), what, "preprocessing"))


@dataclass
class DescribeReply:
    """A site's description and, when asked, the fitted preprocessing state per modality its block
    packages would carry (modalities it cannot release are left out)."""

    description: SiteDescription
    preprocessing: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_payload(self) -> Payload:
        config: dict[str, Any] = {"description": json.dumps(self.description.to_dict())}
        if self.preprocessing:
            config["preprocessing"] = json.dumps(self.preprocessing)
        return Payload(config=_versioned(config))

    @classmethod
    def from_payload(cls, payload: Payload) -> DescribeReply:
        what = "describe reply"
        values = _json(payload, "description", what)
        fitted = _json(payload, "preprocessing", what) if "preprocessing" in payload.config else {}
        try:
            description = SiteDescription.from_dict(values)
        except TypeError as error:
            raise ProtocolError(f"describe reply: malformed description ({error})") from error
        problem = description.problem()
        if problem is not None:
            raise ProtocolError(f"describe reply: malformed description ({problem})")
        return cls(description, _mapping_of_objects(fitted, what, "preprocessing"))


def _mapping_of_objects(value: Any, what: str, key: str) -> dict[str, dict[str, Any]]:
    """``value`` if it maps text to objects, else a ProtocolError naming the field."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in value.items()):
        raise ProtocolError(f"{what}: field {key!r} must map modalities to objects")
    return value


@dataclass
class BlockRequest:
    """Phase block: train one block per held modality with these settings."""

    message_type: ClassVar[MessageType] = MessageType.BLOCK
    run_id: str
    task: Task
    model: ModelConfig
    training: TrainConfig
    preprocessing: dict[str, dict[str, Any]]
    privacy: PrivacyConfig | None = None
    pooled: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per modality, a fitted preprocessing state pooled from the sites' (``shared-preprocessing =
    pooled``): a site fits its own only for modalities not in here, or when the pooled state was
    fitted with other options than its own or does not fit its data."""

    def to_payload(self) -> Payload:
        return Payload(
            config=_versioned(
                {
                    "pooled": json.dumps(self.pooled),
                    "task": json.dumps(self.task.to_dict()),
                    "run-id": self.run_id,
                    "model": json.dumps(asdict(self.model)),
                    "training": json.dumps(asdict(self.training)),
                    "preprocessing": json.dumps(self.preprocessing),
                    "privacy": json.dumps(asdict(self.privacy) if self.privacy is not None else None),
                }
            )
        )

    @classmethod
    def from_payload(cls, payload: Payload) -> BlockRequest:
        what = "block request"
        privacy = _json(payload, "privacy", what)
        return cls(
            run_id=str(_field(payload, "run-id", what)),
            task=_task(payload, what),
            model=_config(ModelConfig, payload, "model", what),
            training=_config(TrainConfig, payload, "training", what),
            preprocessing=_json(payload, "preprocessing", what),
            privacy=None if privacy is None else _config(PrivacyConfig, payload, "privacy", what),
            pooled=_mapping_of_objects(_json(payload, "pooled", what), what, "pooled")
            if "pooled" in payload.config
            else {},
        )


@dataclass
class BlockReply:
    """A site's block packages (serialised ``BlockPackage`` bytes), one per modality, and the
    reason for each block it could not train."""

    packages: dict[str, bytes]
    errors: dict[str, str] = field(default_factory=dict)

    def to_payload(self) -> Payload:
        config: dict[str, Any] = {"modalities": list(self.packages), "packages": list(self.packages.values())}
        if self.errors:
            config["errors"] = json.dumps(self.errors)
        return Payload(config=_versioned(config))

    @classmethod
    def from_payload(cls, payload: Payload) -> BlockReply:
        modalities = _field(payload, "modalities", "block reply")
        packages = _field(payload, "packages", "block reply")
        if not isinstance(modalities, list) or not isinstance(packages, list) or len(modalities) != len(packages):
            raise ProtocolError("block reply: 'modalities' and 'packages' must be lists of the same length")
        if not all(isinstance(m, str) for m in modalities) or not all(isinstance(p, bytes) for p in packages):
            raise ProtocolError("block reply: modalities must be text and packages bytes")
        errors = _json(payload, "errors", "block reply") if "errors" in payload.config else {}
        if not isinstance(errors, dict) or not all(isinstance(v, str) for v in errors.values()):
            raise ProtocolError("block reply: 'errors' must map modalities to reasons")
        return cls(dict(zip(modalities, packages, strict=True)), {str(k): v for k, v in errors.items()})


@dataclass
class RoundRequest:
    """One federated round on a block (``BLOCK_ROUND``: ``package`` is the block) or on the fused
    model (``FUSE_ROUND``: ``package`` is the fused model, sent in the first round only, and
    ``state`` its fusion parameters). ``training.epochs`` 0: evaluate only."""

    message_type: MessageType
    run_id: str
    round: int
    task: Task
    training: TrainConfig
    proximal_mu: float = 0.0
    package: bytes | None = None
    state: dict[str, torch.Tensor] | None = None

    def to_payload(self) -> Payload:
        config: dict[str, Any] = {
            "run-id": self.run_id,
            "round": self.round,
            "task": json.dumps(self.task.to_dict()),
            "training": json.dumps(asdict(self.training)),
            "proximal-mu": self.proximal_mu,
        }
        if self.package is not None:
            config["package"] = self.package
        return Payload(config=_versioned(config), arrays=None if self.state is None else dict(self.state))

    @classmethod
    def from_payload(cls, payload: Payload, message_type: MessageType) -> RoundRequest:
        what = f"{message_type.action} round request"
        package = payload.config.get("package")
        if package is not None and not isinstance(package, bytes):
            raise ProtocolError(f"{what}: field 'package' must be bytes")
        try:
            mu = float(_field(payload, "proximal-mu", what))
            index = int(_field(payload, "round", what))
        except (TypeError, ValueError) as error:
            raise ProtocolError(f"{what}: 'round' and 'proximal-mu' must be numbers") from error
        return cls(
            message_type=message_type,
            run_id=str(_field(payload, "run-id", what)),
            round=index,
            task=_task(payload, what),
            training=_config(TrainConfig, payload, "training", what),
            proximal_mu=mu,
            package=package,
            state=payload.arrays,
        )


@dataclass
class RoundReply:
    """A site's answer to a round: new weights, its training patients, the validation loss of the
    model as received (before local training) and how many validation patients and events that
    loss was measured on (None from a site that does not say)."""

    state: dict[str, torch.Tensor]
    n_train: int
    validation_loss_before: float
    n_validation: int | None = None
    validation_events: int | None = None
    train_events: int | None = None
    """The training events (classification: rarest-class patients) the update rests on; 0 below
    the site's min-cell (disclosure control), None from a site that does not say."""

    def to_payload(self) -> Payload:
        metrics = {"num-examples": float(self.n_train), "validation-loss-before": self.validation_loss_before}
        if self.train_events is not None:
            metrics["train-events"] = float(self.train_events)
        if self.n_validation is not None:
            metrics["validation-patients"] = float(self.n_validation)
        if self.validation_events is not None:
            metrics["validation-events"] = float(self.validation_events)
        return Payload(config=_versioned({}), arrays=self.state, metrics=metrics)

    @classmethod
    def from_payload(cls, payload: Payload) -> RoundReply:
        _field(payload, VERSION_KEY, "round reply")
        if payload.arrays is None or not {"num-examples", "validation-loss-before"} <= set(payload.metrics):
            raise ProtocolError("round reply: needs arrays and the metrics num-examples, validation-loss-before")
        bad = sorted(str(k) for k, v in payload.arrays.items() if not isinstance(v, torch.Tensor))
        if bad:
            raise ProtocolError(f"round reply: arrays {bad[:5]} are not tensors")
        examples, loss = payload.metrics["num-examples"], payload.metrics["validation-loss-before"]
        if not _count(examples) or examples < 1:
            raise ProtocolError(f"round reply: 'num-examples' must be a positive integer, got {examples!r}")
        if not _number(loss) or math.isinf(loss):
            raise ProtocolError(f"round reply: 'validation-loss-before' must be a finite number or NaN, got {loss!r}")
        counts = {}
        for key in ("validation-patients", "validation-events", "train-events"):
            value = payload.metrics.get(key)
            if value is not None and not _count(value):
                raise ProtocolError(f"round reply: {key!r} must be a non-negative integer, got {value!r}")
            counts[key] = None if value is None else int(value)
        return cls(
            payload.arrays,
            int(examples),
            float(loss),
            counts["validation-patients"],
            counts["validation-events"],
            counts["train-events"],
        )


@dataclass
class EvaluateRequest:
    """Phase evaluate: evaluate this model package (and its blocks) on your test patients."""

    message_type: ClassVar[MessageType] = MessageType.EVALUATE
    model: bytes

    def to_payload(self) -> Payload:
        return Payload(config=_versioned({"model": self.model}))

    @classmethod
    def from_payload(cls, payload: Payload) -> EvaluateRequest:
        model = _field(payload, "model", "evaluate request")
        if not isinstance(model, bytes):
            raise ProtocolError("evaluate request: field 'model' must be bytes")
        return cls(model)


@dataclass
class EvaluateReply:
    """Per model name: the site's metric and number of test patients; ``errors``: why the models
    the site could not evaluate failed (the others are still reported); ``curves``: the merged and
    fused models' releasable outcome curves (``fedlego.common.outcome_curves``)."""

    results: dict[str, dict[str, float]]
    errors: dict[str, str] = field(default_factory=dict)
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_payload(self) -> Payload:
        fields = {"results": self.results, "errors": self.errors, "curves": self.curves}
        return Payload(config=_versioned({key: json.dumps(value) for key, value in fields.items()}))

    @classmethod
    def from_payload(cls, payload: Payload) -> EvaluateReply:
        """The reply; a model whose result is malformed moves to ``errors`` with the reason, so
        that the site's other results still count."""
        results = _json(payload, "results", "evaluate reply")
        if not isinstance(results, dict):
            raise ProtocolError("evaluate reply: 'results' must be an object")
        errors = _json(payload, "errors", "evaluate reply") if "errors" in payload.config else {}
        if not isinstance(errors, dict):
            raise ProtocolError("evaluate reply: 'errors' must be an object")
        errors = {str(k): str(v) for k, v in errors.items()}
        valid = {}
        for model, values in results.items():
            problem = evaluation_problem(values)
            if problem is None:
                valid[str(model)] = values
            else:
                errors[str(model)] = f"malformed evaluation result: {problem}"
        return cls(valid, errors, _curves(payload, errors))


def _curves(payload: Payload, errors: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The well-formed curves of an evaluate reply; a malformed one is left out, its reason in
    ``errors`` under ``curve:<model>`` (a site of an earlier version sends none)."""
    if "curves" not in payload.config:
        return {}
    curves = _json(payload, "curves", "evaluate reply")
    if not isinstance(curves, dict):
        raise ProtocolError("evaluate reply: 'curves' must be an object")
    valid = {}
    for model, curve in curves.items():
        problem = curve_problem(curve)
        if problem is None:
            valid[str(model)] = curve
        else:
            errors[f"curve:{model}"] = f"malformed outcome curve: {problem}"
    return valid


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    """A non-negative integer (as int or a whole float)."""
    return _number(value) and math.isfinite(value) and value >= 0 and value == int(value)


def evaluation_problem(values: Any) -> str | None:
    """Why one model's evaluation result is malformed (None when it is well formed): an object
    with ``metric`` (a number in [0, 1], or NaN when nothing was comparable), ``n`` (a count) and
    optionally the pair counts (non-negative integers) and per-patient sums (finite, >= 0)."""
    if not isinstance(values, dict):
        return f"expected an object, got {type(values).__name__}"
    metric = values.get("metric")
    if not _number(metric) or not (math.isnan(metric) or 0.0 <= metric <= 1.0):
        return f"'metric' must be a number in [0, 1] or NaN, got {metric!r}"
    for key in ("n", *PAIR_COUNT_KEYS):
        if key == "n" or key in values:
            count = values.get(key)
            if not _count(count):
                return f"{key!r} must be a non-negative integer, got {count!r}"
    for key in PAIR_SUM_KEYS:
        if key in values and (not _number(values[key]) or not math.isfinite(values[key]) or values[key] < 0):
            return f"{key!r} must be a finite non-negative number, got {values[key]!r}"
    return None


REPLY_TYPES: dict[MessageType, Any] = {
    MessageType.DESCRIBE: DescribeReply,
    MessageType.BLOCK: BlockReply,
    MessageType.BLOCK_ROUND: RoundReply,
    MessageType.FUSE_ROUND: RoundReply,
    MessageType.EVALUATE: EvaluateReply,
}
"""The reply type of each message type."""
