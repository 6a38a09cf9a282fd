"""Protocol payloads (``fedlego.common.protocol``) as Flower records and back: ConfigRecord for
plain values, ArrayRecord for tensors, MetricRecord for metrics."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedlego.common.protocol import Payload


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
