"""An in-process transport: the real ClientApp handlers called directly, without Ray or gRPC.

It runs the orchestrator and the client glue exactly as Flower would (payloads go through Flower
records both ways), one site after the other in this process: for tests, fault injection (chosen
sites fail or stay silent) and the robustness benchmark. Subclass it and alter the replies to
play a hostile site. Federations of real hospitals use ``FlowerTransport``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedlego.client.app import app as client_app
from fedlego.common.protocol import Payload, payload_bytes
from fedlego.messages import from_records, to_records
from fedlego.server.transport import Reply


@dataclass
class InProcessTransport:
    """Sites as contexts in this process; ``crash``/``silent`` name (message type, partition)
    pairs that raise or do not answer."""

    run_config: dict
    n_sites: int
    node_configs: dict[int, dict] = field(default_factory=dict)
    crash: set[tuple[str, int]] = field(default_factory=set)
    silent: set[tuple[str, int]] = field(default_factory=set)
    contexts: dict[int, Context] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Flower's runtime sets the identity of the running app; this transport plays the runtime.
        TaskIdentity.run_id = 1
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = 1
        for index in range(self.n_sites):
            node_config = self.node_configs.get(index, {"partition-id": index, "num-partitions": self.n_sites})
            self.contexts[1000 + index] = Context(
                run_id=1, node_id=1000 + index, node_config=node_config, state=RecordDict(), run_config=self.run_config
            )

    def node_ids(self) -> list[int]:
        return list(self.contexts)

    def exchange(
        self, message_type: str, requests: dict[int, Payload], timeout: float, waiting=None, received=None
    ) -> dict[int, Reply]:
        replies = {}
        for node, payload in requests.items():
            index = node - 1000
            self.calls.append((message_type, index))
            sent = payload_bytes(payload)
            if (message_type, index) in self.silent:
                replies[node] = Reply(node, None, f"no reply within {timeout:.0f} s", sent, 0)
                continue  # a silent site's timeout is not an arrival
            message = Message(content=to_records(payload), dst_node_id=node, message_type=message_type)
            try:
                if (message_type, index) in self.crash:
                    raise RuntimeError(f"site {index} crashed")
                answer = from_records(client_app(message, self.contexts[node]).content)
            except Exception as error:  # a site's handler failing is data for the test
                replies[node] = Reply(node, None, f"{type(error).__name__}: {error}", sent, 0)
            else:
                replies[node] = Reply(node, answer, None, sent, payload_bytes(answer))
            if received is not None:  # as Flower's transport does, each reply as it arrives
                received(replies[node])
        return replies
