"""The site-coordinator protocol: every request and reply survives Flower records, versions are
checked, and malformed messages are refused with the field named."""

from __future__ import annotations

import re

import pytest
import torch

from fedlego.common.config import ModelConfig, PrivacyConfig, TrainConfig
from fedlego.common.protocol import (
    PROTOCOL_VERSION,
    BlockReply,
    BlockRequest,
    DescribeReply,
    DescribeRequest,
    EvaluateReply,
    EvaluateRequest,
    MessageType,
    Payload,
    ProtocolError,
    RoundReply,
    RoundRequest,
    SiteDescription,
)
from fedlego.common.tasks import SurvivalTask
from fedlego.messages import from_records, to_records

TASK = SurvivalTask((10.0, 20.0, 30.0))


def through_flower(payload: Payload) -> Payload:
    return from_records(to_records(payload))


def test_every_message_round_trips_through_flower_records():
    description = SiteDescription("a", "survival", 0, ["rna"], ["tabular"], [10], [3], [4], 5, [1.0, 2.0, 3.0])
    state = {"w": torch.arange(4.0)}
    messages = [
        DescribeReply(description),
        BlockRequest("run", TASK, ModelConfig(steps=1), TrainConfig(epochs=3), {"labs": {"log_transform": True}}),
        BlockRequest("run", TASK, ModelConfig(), TrainConfig(), {}, PrivacyConfig(target_epsilon=2.0)),
        BlockReply({"rna": b"\x00\x01", "cnv": b"\x02"}),
        EvaluateRequest(b"model bytes"),
        EvaluateReply({"merge": {"metric": 0.7, "n": 12}}),
    ]
    for message in messages:
        assert type(message).from_payload(through_flower(message.to_payload())) == message
    assert DescribeRequest.from_payload(through_flower(DescribeRequest().to_payload())) == DescribeRequest()
    request = RoundRequest(MessageType.FUSE_ROUND, "run", 2, TASK, TrainConfig().for_round(1), 0.01, b"pkg", state)
    back = RoundRequest.from_payload(through_flower(request.to_payload()), MessageType.FUSE_ROUND)
    assert (back.run_id, back.round, back.task, back.training, back.proximal_mu, back.package) == (
        "run", 2, TASK, request.training, 0.01, b"pkg",
    )  # fmt: skip
    torch.testing.assert_close(back.state["w"], state["w"])
    reply = RoundReply.from_payload(through_flower(RoundReply(state, 12, 0.5).to_payload()))
    assert (reply.n_train, reply.validation_loss_before, reply.n_validation, reply.validation_events) == (
        12, 0.5, None, None,
    )  # fmt: skip
    counted = RoundReply.from_payload(through_flower(RoundReply(state, 12, 0.5, 7, 3).to_payload()))
    assert (counted.n_validation, counted.validation_events) == (7, 3)


@pytest.mark.parametrize("value", [-1.0, 2.5, float("nan"), float("inf")])
def test_a_round_reply_with_a_malformed_validation_count_is_refused(value):
    payload = RoundReply({"w": torch.zeros(1)}, 12, 0.5, 7, 3).to_payload()
    payload.metrics["validation-events"] = value
    with pytest.raises(ProtocolError, match="'validation-events' must be a non-negative integer"):
        RoundReply.from_payload(payload)


def test_the_training_settings_travel_in_the_round_request():
    request = RoundRequest(MessageType.BLOCK_ROUND, "run", 0, TASK, TrainConfig(learning_rate=0.05).for_round(4))
    back = RoundRequest.from_payload(request.to_payload(), MessageType.BLOCK_ROUND)
    assert (back.training.epochs, back.training.patience, back.training.learning_rate) == (4, 4, 0.05)


def test_another_protocol_version_is_refused_naming_both():
    payload = EvaluateRequest(b"x").to_payload()
    payload.config["protocol"] = PROTOCOL_VERSION + 1
    with pytest.raises(ProtocolError, match=f"protocol version {PROTOCOL_VERSION + 1}.*speaks {PROTOCOL_VERSION}"):
        EvaluateRequest.from_payload(payload)
    del payload.config["protocol"]
    with pytest.raises(ProtocolError, match="protocol version None"):
        EvaluateRequest.from_payload(payload)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: p.config.pop("packages"), "'packages' missing"),
        (lambda p: p.config.update(packages=[b"a", b"b", b"c"]), "same length"),
        (lambda p: p.config.update(packages=["text", b"b"]), "bytes"),
    ],
)
def test_malformed_block_replies_are_refused(build, message):
    payload = BlockReply({"rna": b"a", "cnv": b"b"}).to_payload()
    build(payload)
    with pytest.raises(ProtocolError, match=message):
        BlockReply.from_payload(payload)


def test_malformed_json_fields_name_the_field():
    payload = BlockRequest("run", TASK, ModelConfig(), TrainConfig(), {}).to_payload()
    payload.config["model"] = '{"latent_channels": 8, "wings": 2}'
    with pytest.raises(ProtocolError, match="'model' is not a ModelConfig"):
        BlockRequest.from_payload(payload)
    payload.config["model"] = "{not json"
    with pytest.raises(ProtocolError, match="'model' is not valid JSON"):
        BlockRequest.from_payload(payload)


def test_message_types_match_the_client_handlers():
    assert {t.action for t in MessageType} == {"describe", "block", "blockround", "fuse", "models"}


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ("0.7", "expected an object"),
        ({"metric": "high", "n": 3}, "'metric' must be a number"),
        ({"metric": 1.5, "n": 3}, "'metric' must be a number in \\[0, 1\\]"),
        ({"metric": 0.7, "n": -1}, "'n' must be a non-negative integer"),
        ({"metric": 0.7, "n": 3, "concordant": 2.5}, "'concordant' must be a non-negative integer"),
        ({"metric": 0.7, "n": 3, "tied": True}, "'tied' must be a non-negative integer"),
        ({"metric": 0.7, "n": 3, "pair_squares": float("inf")}, "'pair_squares' must be a finite"),
        ({"metric": 0.7, "n": 3, "credit_squares": -1.0}, "'credit_squares' must be a finite"),
    ],
)
def test_a_malformed_evaluation_result_is_an_error_for_that_model_only(result, reason):
    reply = EvaluateReply({"merge": result, "fuse": {"metric": float("nan"), "n": 4, "concordant": 0}})
    back = EvaluateReply.from_payload(through_flower(reply.to_payload()))
    assert list(back.results) == ["fuse"]  # the well-formed result still counts (NaN: nothing comparable)
    assert re.search(reason, back.errors["merge"])
