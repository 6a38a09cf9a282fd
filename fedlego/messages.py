"""Message payloads shared by the coordinator and the sites, and their Flower records.

A payload is plain Python (numbers, strings, bytes, lists) plus optional tensors and metrics;
``to_records``/``from_records`` map it to Flower's ConfigRecord / ArrayRecord / MetricRecord,
and ``payload_bytes`` measures what travels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict


@dataclass
class Payload:
    """One message's content."""

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


def to_records(payload: Payload) -> RecordDict:
    """A payload as Flower records: config, optional arrays, optional metrics."""
    records: dict[str, Any] = {"config": ConfigRecord(payload.config)}
    if payload.arrays is not None:
        records["arrays"] = ArrayRecord({k: v.detach().cpu().contiguous() for k, v in payload.arrays.items()})
    if payload.metrics:
        records["metrics"] = MetricRecord(payload.metrics)
    return RecordDict(records)


def from_records(content: RecordDict) -> Payload:
    """Flower records back to a payload."""
    config = dict(content.config_records["config"]) if "config" in content.config_records else {}
    arrays = None
    if "arrays" in content.array_records:
        arrays = {k: torch.as_tensor(v) for k, v in content.array_records["arrays"].to_torch_state_dict().items()}
    metrics = dict(content.metric_records["metrics"]) if "metrics" in content.metric_records else {}
    return Payload(config=config, arrays=arrays, metrics=metrics)
