"""The orchestrator's transport over Flower's Grid (Message API)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from flwr.app import Message
from flwr.serverapp import Grid

from fedlego.common.protocol import Payload, payload_bytes
from fedlego.messages import from_records, to_records
from fedlego.server.transport import Received, Reply, TransportClosed, Waiting

POLL_SECONDS = 0.25
"""How often the coordinator asks the SuperLink for replies: a reply waits half of it on average,
once per exchange (a round), and each ask is one small request to the SuperLink."""
REFUSED = (httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN)
"""What the SuperLink answers once a run is stopped (its task token is revoked)."""


@contextmanager
def _open_run() -> Iterator[None]:
    """Turn the SuperLink refusing this run's calls into :class:`TransportClosed`."""
    try:
        yield
    except httpx.HTTPStatusError as error:
        if error.response.status_code in REFUSED:
            raise TransportClosed(
                f"the SuperLink refuses this run's messages ({error.response.status_code})"
            ) from error
        raise


class FlowerTransport:
    """Sends one message per node through the Grid and polls for the replies."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def node_ids(self) -> list[int]:
        return list(self.grid.get_node_ids())

    def exchange(
        self,
        message_type: str,
        requests: dict[int, Payload],
        timeout: float,
        waiting: Waiting | None = None,
        received: Received | None = None,
    ) -> dict[int, Reply]:
        messages = [
            Message(content=to_records(p), dst_node_id=n, message_type=message_type) for n, p in requests.items()
        ]
        sent = {n: payload_bytes(p) for n, p in requests.items()}
        replies: dict[int, Reply] = {}
        # Replies name the request they answer; an error about an unreachable node comes from the
        # SuperLink itself, so its source node id is not the site's.
        with _open_run():
            pushed = set(self.grid.push_messages(messages))
        node_of = {
            m.metadata.message_id: n for m, n in zip(messages, requests, strict=True) if m.metadata.message_id in pushed
        }

        def arrived(message: Message) -> None:
            node = node_of.get(message.metadata.reply_to_message_id, message.metadata.src_node_id)
            if message.has_error():
                reason = message.error.reason or f"error code {message.error.code}"
                replies[node] = Reply(node, None, reason, sent.get(node, 0), 0)
            else:
                try:
                    payload = from_records(message.content)
                except ValueError as error:  # ProtocolError: malformed tensors; a site's reply, not our crash
                    replies[node] = Reply(node, None, f"malformed reply: {error}", sent.get(node, 0), 0)
                else:
                    replies[node] = Reply(node, payload, None, sent.get(node, 0), payload_bytes(payload))
            if received is not None:
                received(replies[node])

        with _open_run():
            self._collect(node_of, timeout, waiting, arrived)
        for node in requests:
            if node not in replies:
                replies[node] = Reply(node, None, f"no reply within {timeout:.0f} s", sent[node], 0)
        return replies

    def _collect(
        self, node_of: dict[str, int], timeout: float, waiting: Waiting | None, arrived: Callable[[Message], None]
    ) -> None:
        """Pull replies, handing each to ``arrived``, until every message is answered or
        ``timeout`` passes."""
        start = time.monotonic()
        pending = set(node_of)
        while pending:
            for message in self.grid.pull_messages(pending):
                arrived(message)
                pending.discard(message.metadata.reply_to_message_id)
            elapsed = time.monotonic() - start
            if not pending or elapsed >= timeout:
                break
            if waiting is not None:
                waiting(sorted(node_of[m] for m in pending), elapsed)
            time.sleep(min(POLL_SECONDS, max(timeout - elapsed, 0.0)))
