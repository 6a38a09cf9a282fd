"""The orchestrator's transport over Flower's Grid (Message API)."""

from __future__ import annotations

from flwr.app import Message
from flwr.serverapp import Grid

from fedlego.common.protocol import Payload, payload_bytes
from fedlego.messages import from_records, to_records
from fedlego.server.transport import Reply


class FlowerTransport:
    """Sends one message per node through the Grid and waits for the replies."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def node_ids(self) -> list[int]:
        return list(self.grid.get_node_ids())

    def exchange(self, message_type: str, requests: dict[int, Payload], timeout: float) -> dict[int, Reply]:
        messages = [
            Message(content=to_records(p), dst_node_id=n, message_type=message_type) for n, p in requests.items()
        ]
        sent = {n: payload_bytes(p) for n, p in requests.items()}
        replies: dict[int, Reply] = {}
        answers = list(self.grid.send_and_receive(messages, timeout=timeout))
        # Replies name the request they answer; an error about an unreachable node comes from the
        # SuperLink itself, so its source node id is not the site's.
        node_of = {m.metadata.message_id: n for m, n in zip(messages, requests, strict=True) if m.metadata.message_id}
        for message in answers:
            node = node_of.get(message.metadata.reply_to_message_id, message.metadata.src_node_id)
            if message.has_error():
                reason = message.error.reason or f"error code {message.error.code}"
                replies[node] = Reply(node, None, reason, sent.get(node, 0), 0)
                continue
            payload = from_records(message.content)
            replies[node] = Reply(node, payload, None, sent.get(node, 0), payload_bytes(payload))
        for node in requests:
            if node not in replies:
                replies[node] = Reply(node, None, f"no reply within {timeout:.0f} s", sent[node], 0)
        return replies
