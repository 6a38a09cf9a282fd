"""One phase's message exchange: send each site its request (with the audit log's head) over the
transport, decode the typed replies, count the bytes both ways, record failures and insist on a
minimum of answers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from tqdm.auto import tqdm

from fedlego.common.audit_head import CONFIG_KEY as AUDIT_HEAD_KEY
from fedlego.common.audit_head import AuditHead
from fedlego.common.protocol import REPLY_TYPES, Payload, ProtocolError
from fedlego.server.results import Failure, RunResults, Traffic
from fedlego.server.transport import Reply, Transport


class FederationError(RuntimeError):
    """The run cannot go on (too few sites answered, nothing to merge...)."""


class PhaseExchange:
    """Exchanges for one run; sites are named by ``site_names`` (node id -> site), else ``node-<id>``."""

    def __init__(
        self,
        transport: Transport,
        results: Callable[[], RunResults],
        audit: Callable[..., None],
        log: Callable[[str], None],
        timeout: float,
        min_responses: int,
        audit_head: Callable[[], AuditHead | None] = lambda: None,
    ) -> None:
        self.transport = transport
        self.results = results
        self.audit = audit
        self.log = log
        self.timeout = timeout
        self.min_responses = min_responses
        self.audit_head = audit_head
        self.site_names: dict[int, str] = {}

    def site(self, node: int) -> str:
        """The name a node's site gave (``node-<id>`` before it described itself)."""
        return self.site_names.get(node, f"node-{node}")

    def __call__(
        self,
        phase: str,
        requests: Mapping[int, Any],
        minimum: int | None = None,
        on_answer: Callable[[int, Any], None] | None = None,
    ) -> dict[int, Any]:
        """Send every node its typed request (all of one message type) and return the typed
        replies of the nodes that answered; raises FederationError below the minimum.
        ``on_answer(node, reply)`` is called for each typed reply as soon as it is decoded (as it
        arrives, when the transport reports arrivals), e.g. to checkpoint it."""
        results = self.results()
        record = results.phase(phase)
        message_types = {r.message_type for r in requests.values()}
        if len(message_types) > 1:
            raise ValueError(f"phase {phase}: one message type per exchange, got {sorted(message_types)}")
        answered: dict[int, Any] = {}
        handled: set[int] = set()

        def handle(reply: Reply) -> None:
            if reply.node_id in handled:
                return
            handled.add(reply.node_id)
            traffic = record.bytes.setdefault(self.site(reply.node_id), Traffic())
            traffic.sent += reply.bytes_sent
            traffic.received += reply.bytes_received
            error = reply.error
            if error is None and reply.payload is not None:
                try:
                    answered[reply.node_id] = REPLY_TYPES[message_type].from_payload(reply.payload)
                except ProtocolError as problem:
                    error = f"ProtocolError: {problem}"
            if error is not None:
                self._failed(results, reply.node_id, phase, error)
            elif on_answer is not None:
                on_answer(reply.node_id, answered[reply.node_id])

        if requests:
            message_type = message_types.pop()
            head = self.audit_head()  # one signed head for the whole exchange
            start = time.perf_counter()
            record.begin()
            progress = ProgressLog(phase, len(requests), self.site, self.log, self.timeout)
            try:
                replies = self.transport.exchange(
                    message_type.value,
                    {n: self._payload(r, head) for n, r in requests.items()},
                    self.timeout,
                    progress,
                    handle,
                )
            finally:
                progress.close()
            record.seconds += time.perf_counter() - start
            record.end()
            for reply in replies.values():
                handle(reply)
        needed = min(minimum if minimum is not None else self.min_responses, len(requests))
        self.log(f"  {phase}: {len(answered)}/{len(requests)} sites answered")
        if len(answered) < needed:
            raise FederationError(
                f"phase {phase}: only {len(answered)} of {len(requests)} sites answered, {needed} needed"
            )
        return answered

    @staticmethod
    def _payload(request: Any, head: AuditHead | None) -> Payload:
        """A request's payload, with the audit log's (signed) head for the site to keep."""
        payload = request.to_payload()
        if head is not None:
            payload.config[AUDIT_HEAD_KEY] = json.dumps(head.to_dict())
        return payload

    def refuse(self, phase: str, node: int, reason: str) -> None:
        """Record that a node's decoded reply in ``phase`` was refused (its part is left out)."""
        self._failed(self.results(), node, phase, reason)

    def _failed(self, results: RunResults, node: int, phase: str, reason: str) -> None:
        site = self.site(node)
        results.failures.append(Failure(site, phase, reason))
        self.audit("site-failed", site=site, phase=phase, reason=reason.splitlines()[0])
        self.log(f"  {phase}: {site} failed: {reason.splitlines()[0]}")


PROGRESS_SECONDS = 30.0
"""How often the coordinator says which sites a phase still waits for."""


class ProgressLog:
    """A transport's ``waiting`` callback, so that a long phase is never silent for minutes: on a
    terminal, a progress bar of the sites that answered with the ones still working; otherwise
    (logs, CI, a deployed ServerApp) every ``PROGRESS_SECONDS`` one line naming them."""

    def __init__(
        self, phase: str, total: int, site: Callable[[int], str], log: Callable[[str], None], timeout: float
    ) -> None:
        self.phase, self.total, self.site, self.log, self.timeout = phase, total, site, log, timeout
        self.next_report = PROGRESS_SECONDS
        self.bar = tqdm(total=total, desc=f"  {phase}", unit="site", leave=False, disable=None)  # off unless a TTY

    def close(self) -> None:
        """Remove the bar (the exchange is over)."""
        self.bar.close()

    def __call__(self, pending: list[int], elapsed: float) -> None:
        if not self.bar.disable:
            self.bar.n = self.total - len(pending)
            self.bar.set_postfix_str("working: " + ", ".join(self.site(node) for node in pending))
            return
        if elapsed < self.next_report:
            return
        self.next_report = elapsed + PROGRESS_SECONDS
        names = ", ".join(self.site(node) for node in pending)
        self.log(
            f"  {self.phase}: {self.total - len(pending)}/{self.total} sites answered after {elapsed:.0f} s; "
            f"still working: {names} (phase timeout {self.timeout:.0f} s)"
        )
