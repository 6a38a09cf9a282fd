"""Evaluate: every site scores what it can of a model (the merge, the fused model, each block) on
its test patients and sends pair counts and metrics, never scores; the coordinator pools them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedlego.common.outcome_curves import pool_curves
from fedlego.common.packaging import serialize
from fedlego.common.protocol import EvaluateRequest
from fedlego.server.checks import aggregate_metrics
from fedlego.server.phases.base import Phase
from fedlego.server.results import Failure

if TYPE_CHECKING:
    from fedlego.proto.fedlego_pb2 import ModelPackage
    from fedlego.server.orchestrator import Federation


class EvaluatePhase(Phase):
    """``evaluate-<model>`` for the model the run produced under that name (``merge`` or ``fuse``)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.name = f"evaluate-{model}"

    def _package(self, federation: Federation) -> ModelPackage | None:
        return {"merge": federation.models.merged, "fuse": federation.models.fused}[self.model]

    def applies(self, federation: Federation) -> bool:
        return self._package(federation) is not None

    def run(self, federation: Federation) -> None:
        federation.log(f"phase evaluate ({self.model})")
        request = EvaluateRequest(serialize(self._package(federation)))
        answered = federation.exchange(self.name, dict.fromkeys(federation.sites, request))
        for node, reply in answered.items():
            site = federation.exchange.site(node)
            for model, reason in reply.errors.items():
                federation.results.failures.append(Failure(site, f"{self.name}:{model}", reason))
                federation.recorder.audit("evaluation-failed", site=site, model=model, reason=reason.splitlines()[0])
                federation.log(f"  {self.name}: {site} could not evaluate {model}: {reason.splitlines()[0]}")
        per_site = {federation.exchange.site(n): reply.results for n, reply in answered.items()}
        federation.results.metrics[self.model] = aggregate_metrics(per_site)
        curves = pool_curves([reply.curves.get(self.model) for reply in answered.values()])
        if curves is not None:
            federation.results.curves[self.model] = curves
