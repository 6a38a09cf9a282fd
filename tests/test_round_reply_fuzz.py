"""Malformed round replies (block FedAvg and fuse rounds): whatever a site sends, decoding gives a
reply or a ``ProtocolError``, and a decoded reply whose parameters cannot be combined with the
others is refused with a reason, costing only that site's part in the round."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlego.common.config import TrainConfig
from fedlego.common.protocol import VERSION_KEY, MessageType, ProtocolError, RoundReply, RoundRequest
from fedlego.common.tasks import ClassificationTask
from fedlego.server.exchange import FederationError
from fedlego.server.rounds import Rounds, reply_problem, valid_replies

SENT = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
PROTOCOL = RoundReply(SENT, 1, 0.5).to_payload().config[VERSION_KEY]

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.none(),
    st.text(max_size=4),
    st.booleans(),
)
dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool, torch.complex64])


@st.composite
def tensors(draw):
    shape = draw(st.lists(st.integers(min_value=0, max_value=4), max_size=3))
    dtype = draw(dtypes)
    if draw(st.booleans()):  # the shape of one of the sent parameters, often enough to reach the deeper checks
        shape = list(SENT[draw(st.sampled_from(sorted(SENT)))].shape)
    value = draw(st.sampled_from([0.0, 1.0, math.nan, math.inf]))
    return torch.full(shape, value).to(dtype) if dtype != torch.bool else torch.zeros(shape, dtype=torch.bool)


METRICS = ("num-examples", "validation-loss-before", "validation-patients", "validation-events")


@st.composite
def payloads(draw):
    """A valid round reply payload with zero to three mutations: a metric set to a hostile value or
    deleted, a parameter replaced by a tensor of any shape, dtype and value (or by a non-tensor),
    deleted or added, or the arrays dropped."""
    payload = RoundReply({k: torch.ones_like(v) for k, v in SENT.items()}, 7, 0.4, 20, 5).to_payload()
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        target = draw(st.sampled_from(["metric", "metric", "array", "array", "no-arrays"]))
        if target == "metric":
            key = draw(st.sampled_from(METRICS))
            if draw(st.booleans()):
                payload.metrics[key] = draw(numbers)
            else:
                payload.metrics.pop(key, None)
        elif target == "array" and payload.arrays is not None:
            key = draw(st.sampled_from([*sorted(SENT), "extra"]))
            if draw(st.integers(min_value=0, max_value=3)):
                payload.arrays[key] = draw(tensors() | st.integers() | st.text(max_size=3))
            else:
                payload.arrays.pop(key, None)
        elif target == "no-arrays":
            payload.arrays = None
    return payload


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads())
def test_a_malformed_round_reply_is_decoded_or_refused_never_crashes(payload):
    try:
        reply = RoundReply.from_payload(payload)
    except ProtocolError:
        return
    assert reply.n_train >= 1 and isinstance(reply.n_train, int)
    assert not math.isinf(reply.validation_loss_before)
    problem = reply_problem(SENT, reply)
    if problem is None:  # combinable: exactly the parameters sent, finite, floating
        assert set(reply.state) == set(SENT)
        assert all(torch.isfinite(v).all() for v in reply.state.values())


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ({"w": torch.zeros(2, 3)}, "missing ['b']"),
        ({**SENT, "extra": torch.zeros(1)}, "unexpected ['extra']"),
        ({"w": torch.zeros(3, 2), "b": torch.zeros(3)}, "shape (3, 2)"),
        ({"w": torch.zeros(2, 3, dtype=torch.int64), "b": torch.zeros(3)}, "dtype torch.int64"),
        ({"w": torch.full((2, 3), math.nan), "b": torch.zeros(3)}, "NaN or inf"),
    ],
)
def test_a_reply_that_cannot_be_combined_says_why(state, reason):
    assert reason in reply_problem(SENT, RoundReply(state, 5, 0.1))


def test_a_reply_in_another_float_precision_is_cast_to_the_sent_dtype():
    refused = []
    kept = valid_replies(SENT, {1: RoundReply({k: v.double() for k, v in SENT.items()}, 5, 0.1)}, refused.append)
    assert not refused and kept[1].state["w"].dtype == torch.float32


@pytest.mark.parametrize(
    ("metric", "value"),
    [
        ("num-examples", math.nan),
        ("num-examples", math.inf),
        ("num-examples", 0.0),
        ("num-examples", 2.5),
        ("validation-loss-before", math.inf),
        ("validation-loss-before", "low"),
    ],
)
def test_a_non_finite_or_impossible_count_or_loss_is_a_protocol_error(metric, value):
    payload = RoundReply(SENT, 3, 0.5).to_payload()
    payload.metrics[metric] = value
    with pytest.raises(ProtocolError, match=metric):
        RoundReply.from_payload(payload)


def test_a_withheld_validation_loss_is_nan_and_decodes():
    payload = RoundReply(SENT, 3, math.nan).to_payload()
    assert math.isnan(RoundReply.from_payload(payload).validation_loss_before)


def _request(index: int, final: bool, state):
    training = TrainConfig().for_round(0 if final else 1)
    return RoundRequest(MessageType.FUSE_ROUND, "run", index, ClassificationTask(2), training, state=dict(state))


def test_a_bad_reply_costs_only_that_sites_part_in_the_round():
    """Site 2 answers with a wrong shape: it is refused with its reason, and the round is the mean
    of the others; with every reply bad the run stops with a FederationError naming the round."""

    def exchange(requests):
        return {
            1: RoundReply({"w": torch.ones(2, 3), "b": torch.ones(3)}, 4, 1.0),
            2: RoundReply({"w": torch.ones(9), "b": torch.ones(3)}, 400, 1.0),
        }

    refused: list[tuple[int, str]] = []
    rounds = Rounds(1, [dict(SENT)])
    rounds.run([1, 2], _request, exchange, lambda _: None, refuse=lambda n, r: refused.append((n, r)))
    assert [n for n, _ in refused] == [2] and "shape (9,)" in refused[0][1]
    torch.testing.assert_close(rounds.states[1]["w"], torch.ones(2, 3))

    def all_bad(requests):
        return {n: RoundReply({"w": torch.full((2, 3), math.nan), "b": torch.ones(3)}, 4, 1.0) for n in requests}

    with pytest.raises(FederationError, match="round 0"):
        Rounds(1, [dict(SENT)]).run([1, 2], _request, all_bad, lambda _: None)


def test_the_fuzz_reaches_replies_that_decode_and_combine():
    """The strategy above is not all noise: some payloads decode, and some of those combine."""
    decoded = combinable = 0

    @settings(max_examples=300, deadline=None, database=None)
    @given(payloads())
    def count(payload):
        nonlocal decoded, combinable
        try:
            reply = RoundReply.from_payload(payload)
        except ProtocolError:
            return
        decoded += 1
        combinable += reply_problem(SENT, reply) is None

    count()
    assert decoded > 10 and combinable > 0
