"""The Flower transport polls the Grid for replies and tells the coordinator who it still waits for;
the coordinator turns that into a progress line at most every ``PROGRESS_SECONDS``."""

from __future__ import annotations

import io
import sys

import httpx
import pytest
from flwr.app import Message
from flwr.supercore.task_identity import TaskIdentity

from fedlego.common.protocol import DescribeRequest
from fedlego.messages import to_records
from fedlego.server import exchange as exchange_module
from fedlego.server import flower_transport
from fedlego.server.exchange import ProgressLog
from fedlego.server.flower_transport import FlowerTransport
from fedlego.server.transport import TransportClosed


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower's runtime sets the identity of the running app; these tests play the runtime."""
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1


class SlowGrid:
    """A Grid whose node ``n`` answers on its ``n``-th poll; node 3 never answers."""

    def __init__(self) -> None:
        self.polls = 0
        self.sent: dict[str, Message] = {}

    def push_messages(self, messages):
        ids = []
        for index, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{index}"
            self.sent[f"m{index}"] = message
            ids.append(f"m{index}")
        return ids

    def pull_messages(self, message_ids):
        self.polls += 1
        replies = []
        for message_id in sorted(message_ids):
            request = self.sent[message_id]
            if request.metadata.dst_node_id == self.polls and self.polls != 3:
                content = to_records(DescribeRequest().to_payload())
                replies.append(Message(content=content, reply_to=request))
        return replies


def test_replies_arrive_over_several_polls_and_the_silent_node_times_out(monkeypatch):
    monkeypatch.setattr(flower_transport.time, "sleep", lambda seconds: None)
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(flower_transport.time, "monotonic", lambda: next(clock))
    grid = SlowGrid()
    waited: list[tuple[list[int], float]] = []
    arrived: list[tuple[int, int]] = []
    requests = {n: DescribeRequest().to_payload() for n in (1, 2, 3)}
    replies = FlowerTransport(grid).exchange(  # type: ignore[arg-type]
        "query.describe",
        requests,
        timeout=5.0,
        waiting=lambda pending, elapsed: waited.append((pending, elapsed)),
        received=lambda reply: arrived.append((reply.node_id, grid.polls)),
    )
    assert arrived == [(1, 1), (2, 2)]  # each reply reported at the poll that brought it; none for the silent node
    assert replies[1].error is None and replies[2].error is None
    assert replies[3].payload is None and "no reply within 5 s" in str(replies[3].error)
    assert waited[0][0] == [2, 3]  # after the first poll node 1 has answered
    assert all(pending == [3] for pending, _ in waited[1:])
    assert grid.polls <= 6  # polling stops at the timeout


def test_no_waiting_call_when_every_site_answers_at_the_first_poll(monkeypatch):
    class PromptGrid(SlowGrid):
        def pull_messages(self, message_ids):
            content = to_records(DescribeRequest().to_payload())
            return [Message(content=content, reply_to=self.sent[m]) for m in message_ids]

    calls = []
    replies = FlowerTransport(PromptGrid()).exchange(  # type: ignore[arg-type]
        "query.describe", {7: DescribeRequest().to_payload()}, 5.0, lambda *a: calls.append(a)
    )
    assert replies[7].error is None and calls == []


def test_the_progress_log_names_the_pending_sites_at_most_every_interval(monkeypatch):
    monkeypatch.setattr(exchange_module, "PROGRESS_SECONDS", 30.0)
    lines: list[str] = []
    progress = ProgressLog("block", 3, {1: "site-a", 2: "site-b", 3: "site-c"}.get, lines.append, 600.0)
    for elapsed in (1.0, 10.0, 29.0):
        progress([2, 3], elapsed)
    assert lines == []
    progress([2, 3], 31.0)
    progress([3], 40.0)  # within 30 s of the last line: quiet
    progress([3], 62.0)
    assert lines == [
        "  block: 1/3 sites answered after 31 s; still working: site-b, site-c (phase timeout 600 s)",
        "  block: 2/3 sites answered after 62 s; still working: site-c (phase timeout 600 s)",
    ]


def test_on_a_terminal_the_progress_is_a_bar_of_answered_sites(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    lines: list[str] = []
    progress = ProgressLog("block", 3, {1: "site-a", 2: "site-b", 3: "site-c"}.get, lines.append, 600.0)
    progress([3], 45.0)
    progress.bar.refresh()
    shown = terminal.getvalue()
    progress.close()
    assert lines == [] and "block" in shown and "2/3" in shown and "working: site-c" in shown


class StoppedGrid(SlowGrid):
    """A Grid whose SuperLink has revoked the run's token (the run was stopped)."""

    def pull_messages(self, message_ids):
        request = httpx.Request("POST", "http://127.0.0.1/v1/runtime/pull-messages")
        raise httpx.HTTPStatusError("401", request=request, response=httpx.Response(401, request=request))


def test_a_run_stopped_at_the_superlink_closes_the_transport(monkeypatch):
    monkeypatch.setattr(flower_transport.time, "sleep", lambda seconds: None)
    requests = {n: DescribeRequest().to_payload() for n in (1, 2)}
    with pytest.raises(TransportClosed, match="refuses this run's messages"):
        FlowerTransport(StoppedGrid()).exchange("query.describe", requests, timeout=5.0)  # type: ignore[arg-type]
