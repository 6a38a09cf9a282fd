"""Protocol payloads (``fedlego.common.protocol``) as Flower records and back.

A payload's plain values go in a ConfigRecord, its metrics in a MetricRecord, and its tensors
packed into one ConfigRecord (``tensors``: a JSON manifest of names, dtypes and shapes, and one
bytes value holding them all). Flower would carry an ArrayRecord as one object per tensor (two
with its chunk), each a request of its own between ServerApp, SuperLink, SuperNode and ClientApp:
a fused model's ~70 tensors cost seconds per round deployed; packed they travel as one object.
``from_records`` checks the manifest against the bytes before building any tensor (a malformed
one is a ``ProtocolError`` naming the field). Parties of different fedlego versions never exchange
payloads (the run refuses them first), so there is no older layout to read.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedlego.common.protocol import Payload, ProtocolError

TENSORS = "tensors"
DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}
"""The tensor types a payload may carry."""


def pack_tensors(tensors: dict[str, torch.Tensor]) -> ConfigRecord:
    """Tensors as one record: ``manifest`` (JSON list of [name, dtype, shape]) and ``data``."""
    manifest, chunks = [], []
    for name, tensor in tensors.items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        dtype = str(flat.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise ProtocolError(f"tensor {name!r}: dtype {dtype} cannot be sent")
        manifest.append([name, dtype, list(tensor.shape)])
        chunks.append(flat.view(torch.uint8).numpy().tobytes())
    return ConfigRecord({"manifest": json.dumps(manifest), "data": b"".join(chunks)})


def _entry(entry: Any, index: int) -> tuple[str, torch.dtype, list[int]]:
    if not (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(entry[1], str)
        and entry[1] in DTYPES
    ):
        raise ProtocolError(f"tensors manifest entry {index}: expected [name, dtype, shape] with a known dtype")
    shape = entry[2]
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ProtocolError(f"tensors manifest entry {index} ({entry[0]!r}): shape must be non-negative integers")
    return entry[0], DTYPES[entry[1]], shape


def unpack_tensors(record: ConfigRecord) -> dict[str, torch.Tensor]:
    """The tensors of ``pack_tensors``; ProtocolError when the manifest and the bytes disagree."""
    data, manifest = record.get("data"), record.get("manifest")
    if not isinstance(data, bytes) or not isinstance(manifest, str):
        raise ProtocolError("tensors record needs a 'manifest' text and 'data' bytes")
    try:
        entries = json.loads(manifest)
    except json.JSONDecodeError as error:
        raise ProtocolError(f"tensors manifest is not JSON ({error})") from None
    if not isinstance(entries, list):
        raise ProtocolError("tensors manifest must be a list")
    tensors, offset = {}, 0
    for index, raw in enumerate(entries):
        name, dtype, shape = _entry(raw, index)
        numel = 1
        for size in shape:  # Python integers: no overflow
            numel *= size
        end = offset + numel * torch.empty((), dtype=dtype).element_size()
        if end > len(data) or name in tensors:
            raise ProtocolError(f"tensors manifest entry {index} ({name!r}): beyond the data or repeated")
        chunk = data[offset:end]
        flat = torch.frombuffer(bytearray(chunk), dtype=dtype) if chunk else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(shape)
        offset = end
    if offset != len(data):
        raise ProtocolError(f"tensors data holds {len(data) - offset} bytes the manifest does not describe")
    return tensors


def to_records(payload: Payload) -> RecordDict:
    """A payload as Flower records: config, optional packed tensors, optional metrics."""
    records: dict[str, Any] = {"config": ConfigRecord(payload.config)}
    if payload.arrays is not None:
        records[TENSORS] = pack_tensors(payload.arrays)
    if payload.metrics:
        records["metrics"] = MetricRecord(payload.metrics)
    return RecordDict(records)


def from_records(content: RecordDict) -> Payload:
    """Flower records back to a payload (ProtocolError when its tensors are malformed)."""
    config = dict(content.config_records["config"]) if "config" in content.config_records else {}
    arrays = None
    if TENSORS in content.config_records:
        arrays = unpack_tensors(content.config_records[TENSORS])
    metrics = dict(content.metric_records["metrics"]) if "metrics" in content.metric_records else {}
    return Payload(config=config, arrays=arrays, metrics=metrics)
