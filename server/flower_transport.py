"""The orchestrator's transport over Flower's Grid (Message API)."""

from __future__ import annotations

from flwr.app import Message
from flwr.serverapp import Grid

from fedlego.messages import Payload, from_records, payload_bytes, to_records
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
        for message in self.grid.send_and_receive(messages, timeout=timeout):
            node = message.metadata.src_node_id
            if message.has_error():
                replies[node] = Reply(
                    node, None, message.error.reason or f"error code {message.error.code}", sent.get(node, 0), 0
                )
                continue
            payload = from_records(message.content)
            replies[node] = Reply(node, payload, None, sent.get(node, 0), payload_bytes(payload))
        for node in requests:
            if node not in replies:
                replies[node] = Reply(node, None, f"no reply within {timeout:.0f} s", sent[node], 0)
        return replies
