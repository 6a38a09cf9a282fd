"""Payloads as Flower records: tensors of every allowed type and shape come back equal, packed as
one record (one object on the wire, not one per tensor); a malformed tensors record, however it is
broken, is a ProtocolError naming the field, and a reply carrying one costs only that site."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlego.common.protocol import DescribeRequest, Payload, ProtocolError
from fedlego.messages import DTYPES, TENSORS, from_records, pack_tensors, to_records, unpack_tensors
from fedlego.server.flower_transport import FlowerTransport

TENSOR_CASES = {
    "matrix": torch.randn(3, 4),
    "scalar": torch.tensor(2.5, dtype=torch.float64),
    "empty": torch.zeros(0, 5),
    "counts": torch.arange(7),
    "mask": torch.tensor([True, False, True]),
    "half": torch.randn(2, 2).half(),
    "brain": torch.randn(3).bfloat16(),
    "small": torch.tensor([-3, 4], dtype=torch.int8),
}


def test_tensors_come_back_equal_and_travel_as_one_record():
    payload = Payload(config={"k": "v"}, arrays=TENSOR_CASES, metrics={"m": 1.0})
    records = to_records(payload)
    assert not records.array_records and set(records.config_records) == {"config", TENSORS}
    back = from_records(records)
    assert back.config == {"k": "v"} and back.metrics == {"m": 1.0}
    assert list(back.arrays) == list(TENSOR_CASES)
    for name, tensor in TENSOR_CASES.items():
        assert back.arrays[name].dtype == tensor.dtype and back.arrays[name].shape == tensor.shape
        assert torch.equal(back.arrays[name], tensor), name


def test_a_payload_without_tensors_has_no_tensors_record():
    assert TENSORS not in to_records(DescribeRequest().to_payload()).config_records


def _record(manifest, data: bytes) -> ConfigRecord:
    return ConfigRecord({"manifest": manifest if isinstance(manifest, str) else json.dumps(manifest), "data": data})


@pytest.mark.parametrize(
    ("manifest", "data", "says"),
    [
        ("not json", b"", "not JSON"),
        ({"w": 1}, b"", "must be a list"),
        ([["w", "complex64", [1]]], b"\0" * 8, "known dtype"),
        ([["w", "float32", [-1]]], b"", "non-negative"),
        ([["w", "float32", [2.5]]], b"", "non-negative"),
        ([["w", "float32", [2**62, 2**62]]], b"", "beyond the data"),  # the element count overflows int64
        ([["w", "float32", [2]]], b"\0" * 4, "beyond the data"),
        ([["w", "float32", [1]]], b"\0" * 8, "does not describe"),
        ([["w", "float32", [1]], ["w", "float32", [1]]], b"\0" * 8, "repeated"),
        ([["w", "float32"]], b"", "expected"),
    ],
)
def test_malformed_tensors_records_are_named(manifest, data, says):
    with pytest.raises(ProtocolError, match=says):
        unpack_tensors(_record(manifest, data))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    manifest=st.lists(
        st.lists(st.sampled_from(["w", "b"]) | st.sampled_from(sorted(DTYPES)) | json_values, max_size=4) | json_values,
        max_size=4,
    ),
    data=st.binary(max_size=64),
)
def test_no_tensors_record_breaks_the_reader_with_anything_but_a_protocol_error(manifest, data):
    try:
        tensors = unpack_tensors(_record(manifest, data))
    except ProtocolError:
        return
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == len(data)


def test_the_packed_form_is_what_pack_tensors_writes():
    record = pack_tensors({"w": torch.ones(2, dtype=torch.int32)})
    assert json.loads(record["manifest"]) == [["w", "int32", [2]]] and len(record["data"]) == 8


class OneReplyGrid:
    """A Grid whose node 1 answers with ``content``."""

    def __init__(self, content: RecordDict) -> None:
        self.content, self.sent = content, {}

    def get_node_ids(self):
        return [1]

    def push_messages(self, messages):
        for index, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{index}"
            self.sent[f"m{index}"] = message
        return list(self.sent)

    def pull_messages(self, message_ids):
        return [Message(content=self.content, reply_to=self.sent[m]) for m in sorted(message_ids)]


def test_a_reply_with_malformed_tensors_costs_only_that_reply():
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1
    content = RecordDict({"config": ConfigRecord({}), TENSORS: _record([["w", "float32", [9]]], b"")})
    replies = FlowerTransport(OneReplyGrid(content)).exchange("query.describe", {1: DescribeRequest().to_payload()}, 5)
    assert (
        replies[1].payload is None and "malformed reply" in replies[1].error and "beyond the data" in replies[1].error
    )
