"""What the orchestrator needs from a transport: send one message per site, collect replies.

The Flower implementation is ``flower_transport``; it counts the payload bytes both ways."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fedlego.common.protocol import Payload


class TransportClosed(RuntimeError):
    """The network no longer takes this run's messages: the run was stopped at the SuperLink."""


@dataclass
class Reply:
    """A site's answer (or the reason there is none) and the payload bytes each way."""

    node_id: int
    payload: Payload | None
    error: str | None
    bytes_sent: int
    bytes_received: int


class Transport(Protocol):
    """The orchestrator's view of the network."""

    def node_ids(self) -> list[int]:
        """Sites connected now."""
        ...

    def exchange(
        self,
        message_type: str,
        requests: dict[int, Payload],
        timeout: float,
        waiting: Waiting | None = None,
        received: Received | None = None,
    ) -> dict[int, Reply]:
        """Send each node its payload; every requested node gets a Reply (error on timeout).
        While replies are outstanding, ``waiting(pending node ids, elapsed seconds)`` is called
        after every poll (a transport that answers at once never calls it); ``received(reply)``
        is called for each site's reply as it arrives (a transport may skip it: the caller then
        handles the returned replies)."""
        ...


Waiting = Callable[[list[int], float], None]
Received = Callable[[Reply], None]
