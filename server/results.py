"""The results of one federated run as a typed object, written as ``results.json`` and read back
by the report, the command line and the benchmarks (``RunResults.from_json``)."""

from __future__ import annotations

import json
import time
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

RESULTS_NAME = "results.json"


@dataclass
class Traffic:
    """Payload bytes sent to and received from one site in one phase."""

    sent: int = 0
    received: int = 0


@dataclass
class PhaseRecord:
    """Wall time of a phase and its traffic per site; ``started``/``ended``: Unix times of its
    first exchange's start and last exchange's end (to line up with outside measurements)."""

    seconds: float = 0.0
    bytes: dict[str, Traffic] = field(default_factory=dict)
    started: float | None = None
    ended: float | None = None

    def begin(self) -> None:
        """Mark the start of an exchange (the first one sets ``started``)."""
        if self.started is None:
            self.started = time.time()

    def end(self) -> None:
        """Mark the end of an exchange."""
        self.ended = time.time()


@dataclass
class Failure:
    """A site that failed or did not answer in a phase, and why."""

    site: str
    phase: str
    reason: str


@dataclass
class Refusal:
    """A package left out of the merge, and why."""

    site: str
    modality: str
    reason: str


@dataclass
class SiteMetric:
    """A model's metric on one site's test patients."""

    metric: float
    n: int


@dataclass
class ModelMetrics:
    """A model's metric per site, the sample-weighted mean over sites and the pooled metric: the
    comparable pairs of every site's test patients counted together (``pairs`` of them)."""

    per_site: dict[str, SiteMetric] = field(default_factory=dict)
    weighted_mean: float = float("nan")
    n: int = 0
    pooled: float = float("nan")
    pairs: int = 0
    pooled_low: float | None = None
    """Lower end of the pooled metric's 95 % jackknife interval (None: not every site reported
    the per-patient sums, see ``fedlego.common.concordance``)."""
    pooled_high: float | None = None
    """Upper end of that interval."""


@dataclass
class RoundsRecord:
    """Federated rounds on one set of parameters: the sites' validation loss per round, the kept
    round, who took part (``sites`` for a block, ``participants`` per round for fuse), how much
    validation data chose the round and, for fuse, the trainable and total parameter counts."""

    validation_loss: list[float] = field(default_factory=list)
    kept_round: int = 0
    sites: list[str] | None = None
    participants: list[list[str]] | None = None
    trainable: int | None = None
    total: int | None = None
    validation_patients: list[int | None] | None = None
    """Per round, the validation patients the sites' losses were measured on (summed over sites)."""
    validation_events: list[int | None] | None = None
    """Per round, their events (survival) or rarest-class patients (classification)."""
    far_sites: list[list] | None = None
    """``[round, site, ratio]`` for each site whose round update was over 3x the round's median."""
    stopped_early: bool | None = None
    cut_short: str | None = None
    """Why the rounds stopped before their budget: too few sites answered a round (the sites
    that held them vanished); the best of the rounds finished before was kept."""
    """The validation loss stopped improving for round-patience rounds before the budget ran out."""

    def fewest_validation(self) -> tuple[int | None, int | None]:
        """The fewest validation patients and events any round was measured on (None where no
        site said)."""
        patients = [p for p in self.validation_patients or [] if p is not None]
        events = [e for e in self.validation_events or [] if e is not None]
        return (min(patients) if patients else None, min(events) if events else None)


@dataclass
class BlockPrivacy:
    """The DP-SGD budget a merged block reports in its manifest."""

    site: str
    epsilon: float
    delta: float | None = None
    noise_multiplier: float | None = None
    clip: float | None = None


@dataclass
class FusePrivacy:
    """Central DP of the fuse rounds: the rounds' sample rates, clipped updates and spent budget."""

    sample_rates: list[float] = field(default_factory=list)
    clipped_updates: list[int] = field(default_factory=list)
    epsilon: float = 0.0
    delta: float = 0.0
    noise_multiplier: float = 0.0
    clip: float = 0.0
    rounds: int = 0


@dataclass
class PrivacyRecord:
    """The privacy budget of the run (blocks trained with DP-SGD, DP-FedAvg fuse rounds)."""

    blocks: dict[str, BlockPrivacy] | None = None
    fuse: FusePrivacy | None = None


@dataclass
class Signatures:
    """Whether sites had to sign their packages and whether the coordinator signed its models."""

    required: bool = False
    models_signed: bool = False


@dataclass
class RunResults:
    """Everything a federated run reports. ``metrics[phase][model]``; ``phases[phase]``;
    ``rounds["block:<modality>"]`` and ``rounds["fuse"]``."""

    run_id: str
    config: dict[str, Any]
    kind: str = "federated"
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    phases: dict[str, PhaseRecord] = field(default_factory=dict)
    metrics: dict[str, dict[str, ModelMetrics]] = field(default_factory=dict)
    rounds: dict[str, RoundsRecord] = field(default_factory=dict)
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model (merge, fuse), its outcome curve's counts summed over sites: Kaplan-Meier counts
    by predicted risk group, or ROC counts (``fedlego.common.outcome_curves``)."""
    signatures: Signatures | None = None
    data: dict[str, dict[str, str]] | None = None
    """Per site, where its data came from (a site folder and its SHA-256, or a bundled data set)."""
    task: dict[str, Any] | None = None
    schema_sha256: str | None = None
    """The consortium schema every site checked its data against (``schema`` run-config key)."""
    outcome: str | None = None
    """What the event or positive class is, as the consortium schema says (``labels.outcome``)."""
    metric: str | None = None
    audit_head: str | None = None
    audit_signature: str | None = None
    """The coordinator's signature of ``audit_head`` (hex; see ``fedlego.common.audit_head``)."""
    merged_modalities: list[str] | None = None
    privacy: PrivacyRecord | None = None
    status: str | None = None
    """completed, incomplete (it lacks a registered site, a modality or paired sites: ``gaps``),
    failed or stopped (None while the run goes on, or after it was killed)."""
    gaps: list[str] | None = None
    """What the finished run lacks (see ``fedlego.server.completeness``)."""
    error: str | None = None
    resumed: int | None = None
    wall_seconds: float | None = None
    finished_at: str | None = None

    def phase(self, name: str) -> PhaseRecord:
        """The record of a phase, created on first use."""
        return self.phases.setdefault(name, PhaseRecord())

    def privacy_record(self) -> PrivacyRecord:
        """The privacy record, created on first use."""
        if self.privacy is None:
            self.privacy = PrivacyRecord()
        return self.privacy

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; fields that are None are left out."""
        return plain_values(self)

    def to_json(self) -> str:
        """The results.json text."""
        return json.dumps(self.to_dict(), indent=2, default=str)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunResults:
        """Inverse of ``to_dict`` (missing optional fields are None); TypeError when malformed."""
        if not isinstance(values, dict):
            raise TypeError(f"results must be an object, not {type(values).__name__}")
        return typed_values(cls, values)

    @classmethod
    def from_json(cls, text: str) -> RunResults:
        """Read a results.json text."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def read(cls, path: Path) -> RunResults:
        """Read a results.json file (or the one in a run folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_NAME
        try:
            return cls.from_json(path.read_text())
        except (json.JSONDecodeError, TypeError, KeyError) as error:
            raise ValueError(f"{path}: not a fedlego results.json ({error})") from error


def plain_values(value: Any) -> Any:
    """A dataclass (nested dataclasses, dicts, lists) as plain JSON values; None fields left out."""
    if hasattr(value, "__dataclass_fields__"):
        return {
            f.name: plain_values(getattr(value, f.name)) for f in fields(value) if getattr(value, f.name) is not None
        }
    if isinstance(value, dict):
        return {k: plain_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_values(v) for v in value]
    return value


def typed_values(kind: Any, value: Any) -> Any:
    """``value`` (plain JSON) as the annotated type ``kind``: dataclasses, dicts, lists, optionals."""
    if value is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return typed_values(options[0], value) if len(options) == 1 else value
    if hasattr(kind, "__dataclass_fields__"):
        if not isinstance(value, dict):
            raise TypeError(f"{kind.__name__} must be an object, not {type(value).__name__}")
        hints = typing.get_type_hints(kind)
        names = {f.name for f in fields(kind)}
        return kind(**{k: typed_values(hints[k], v) for k, v in value.items() if k in names})
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, not {type(value).__name__}")
        _, item = typing.get_args(kind)
        return {k: typed_values(item, v) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, not {type(value).__name__}")
        (item,) = typing.get_args(kind)
        return [typed_values(item, v) for v in value]
    return value
