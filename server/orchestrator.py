"""The coordinator's run over any transport: it walks the phases in ``server.phases`` (describe,
block, block FedAvg, merge, evaluate, fuse, evaluate), checkpointing each, and ends every attempt
on record. Orchestration only: messages go through ``server.exchange``, files through
``server.recorder``, the science is in ``fedlego.common``.
"""

from __future__ import annotations

import datetime
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlego.common.aggregation import ServerOptimizer, combine_states
from fedlego.common.config import RunConfig
from fedlego.common.lego import LegoBlock
from fedlego.common.packaging import PackageError, parse_model_package
from fedlego.common.protocol import RoundReply, SiteDescription
from fedlego.common.signing import COORDINATOR, load_signing_key, load_trusted_sites, sign_package
from fedlego.common.tasks import Task
from fedlego.proto.fedlego_pb2 import BlockPackage, ModelPackage
from fedlego.server.completeness import registered_sites, run_gaps
from fedlego.server.exchange import PROGRESS_SECONDS, FederationError, PhaseExchange
from fedlego.server.phases import Phase, run_phases
from fedlego.server.recorder import RecordError, RunRecorder
from fedlego.server.results import RunResults, Signatures
from fedlego.server.rounds import Round, StateDict
from fedlego.server.transport import Transport, TransportClosed

__all__ = ["Federation", "FederationError"]


@dataclass
class Models:
    """What the phases produce and pass on."""

    task: Task | None = None
    candidates: dict[str, list[tuple[BlockPackage, LegoBlock]]] = field(default_factory=dict)
    """Checked block packages per modality, largest cohort first (the block phase's)."""
    blocks: dict[str, LegoBlock] = field(default_factory=dict)
    block_packages: dict[str, BlockPackage] = field(default_factory=dict)
    pooled_preprocessing: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per modality held by several sites, the preprocessing pooled from theirs (describe phase)."""
    pooled_sites: dict[str, list[str]] = field(default_factory=dict)
    """Per pooled modality, the sites whose statistics entered the pool."""
    merged: ModelPackage | None = None
    fused: ModelPackage | None = None


class Federation:
    """One federated run: call ``run()``; results are returned and written to ``out_dir``."""

    def __init__(self, transport: Transport, settings: RunConfig, log: Callable[[str], None] = print) -> None:
        self.transport = transport
        self.settings = settings
        self.log = log
        self.run_id = settings.run_id()
        out_dir = settings.coordinator.out_dir
        self.recorder = RunRecorder(
            Path(out_dir) if out_dir else None, RunResults(self.run_id, settings.to_flat()), log
        )
        self.exchange = PhaseExchange(
            transport,
            lambda: self.results,
            self.recorder.audit,
            log,
            settings.coordinator.phase_timeout,
            settings.coordinator.min_responses,
            lambda: self.recorder.head(),
        )
        self.sites: dict[int, SiteDescription] = {}
        self.trusted = None
        self.signing_key = None
        self.models = Models()
        self.phases: list[Phase] = run_phases()

    @property
    def results(self) -> RunResults:
        """The results so far (the checkpoint's after a resume)."""
        return self.recorder.results

    def load_keys(self) -> None:
        """The trusted signers and the coordinator's signing key, when configured."""
        coordinator = self.settings.coordinator
        try:
            if coordinator.trusted_sites:
                self.trusted = load_trusted_sites(Path(coordinator.trusted_sites))
            if coordinator.coordinator_key:
                self.signing_key = load_signing_key(Path(coordinator.coordinator_key))
                self.recorder.signing_key = self.signing_key
        except ValueError as error:
            raise FederationError(str(error)) from error
        self.results.signatures = Signatures(required=self.trusted is not None, models_signed=bool(self.signing_key))

    def sign(self, package):
        """Sign a package made by the coordinator (blocks averaged here, merged and fused models)."""
        if self.signing_key is not None:
            sign_package(package, self.signing_key, COORDINATOR)
        return package

    def wait_for_sites(self) -> list[int]:
        """Nodes connected within the wait timeout: ``min-sites`` of them, or with min-sites 0 every
        registered site (the consortium's signers; without them, whoever is connected). Says whom
        it waits for every ``PROGRESS_SECONDS``."""
        coordinator = self.settings.coordinator
        registered = registered_sites(self)
        needed = coordinator.min_sites or len(registered) or 1
        what = f"min-sites = {coordinator.min_sites}" if coordinator.min_sites else "every registered site"
        deadline = time.monotonic() + coordinator.wait_timeout
        nodes, next_report = self.transport.node_ids(), time.monotonic()
        while len(nodes) < needed and time.monotonic() < deadline:
            if time.monotonic() >= next_report:
                among = f" (registered: {', '.join(registered)})" if registered else ""
                self.log(f"waiting for sites: {len(nodes)} of {needed} connected, {what}{among}")
                next_report += PROGRESS_SECONDS
            time.sleep(1.0)
            nodes = self.transport.node_ids()
        if len(nodes) < needed:
            raise FederationError(
                f"only {len(nodes)} of {needed} sites connected within {coordinator.wait_timeout:.0f} s ({what}"
                + (f": {', '.join(registered)}" if registered and not coordinator.min_sites else "")
                + "); start the missing sites, or set min-sites to run without them"
            )
        return sorted(nodes)

    def reload_model(self, name: str) -> ModelPackage:
        """A model package this run wrote before a restart."""
        data = self.recorder.package(name)
        if data is None:
            raise FederationError(f"the checkpoint says {name} was written, but it is missing")
        try:
            return parse_model_package(data, name)
        except PackageError as error:
            raise FederationError(str(error)) from error

    def combine(
        self,
        reference: StateDict,
        answered: dict[int, RoundReply],
        counts: list[float],
        asked: int,
        optimizer: ServerOptimizer | None = None,
    ) -> StateDict:
        """A round's parameters from the sites' replies (``round-aggregation``, ``update-norm-bound``),
        stepped from ``reference`` by the server ``optimizer`` when one is given."""
        rounds = self.settings.rounds
        states = [reply.state for reply in answered.values()]
        combined = combine_states(rounds.round_aggregation, states, counts, reference, rounds.update_norm_bound)
        return combined if optimizer is None else optimizer.step(reference, combined)

    def record_far_sites(self, phase: str, finished: Round, far: list[list]) -> None:
        """Log and keep (``[round, site, ratio]``) the sites whose update this round was far over
        the round's median update."""
        for node, ratio in sorted(finished.far_nodes().items()):
            site = self.exchange.site(node)
            far.append([finished.index, site, round(ratio, 2)])
            self.log(f"  {phase}: round {finished.index}: {site}'s update is {ratio:.1f}x the median of the sites'")

    def _finish(self, gaps: list[str]) -> None:
        """Completed, or incomplete when the run has gaps the run config does not allow."""
        self.results.gaps = gaps or None
        for gap in gaps:
            self.log(f"  gap: {gap}")
        if gaps and not self.settings.coordinator.allow_partial:
            self._ended("incomplete", "; ".join(gaps) + " (set allow-partial = true to accept such a run)")
            return
        self.results.status = "completed"
        self.recorder.audit("run-completed", gaps=gaps)

    def _ended(self, status: str, reason: str) -> None:
        self.results.status = status
        self.results.error = reason
        self.log(f"federation {status}: {reason}")
        self.recorder.audit(f"run-{status}", reason=reason)

    def _walk(self) -> None:
        """Every phase in order: restored when it finished before a restart, else run if it applies."""
        for phase in self.phases:
            if phase.checkpointed and self.recorder.done(phase.name):
                phase.restore(self)
            elif phase.applies(self):
                phase.run(self)
                if phase.checkpointed:
                    self.recorder.save_progress(phase.name)

    def run(self) -> RunResults:
        """All phases; on a fatal error the results so far are written with the reason."""
        start = time.perf_counter()
        try:
            try:
                self.recorder.open(self.results.config)
            except RecordError as error:
                raise FederationError(str(error)) from error
            self.load_keys()
            self._walk()
            self._finish(run_gaps(self))
        except FederationError as error:
            self._ended("failed", str(error))
        except TransportClosed as error:
            self._ended("stopped", f"stopped at the SuperLink before finishing: {error}")
        except Exception as error:  # a bug or hostile input nothing else caught: the run still ends, on record
            self.log(traceback.format_exc().rstrip())
            self._ended("failed", f"unexpected {type(error).__name__}: {error}")
        except (KeyboardInterrupt, SystemExit) as error:  # Ctrl-C, or Flower ending the ServerApp (`flwr stop`)
            self._ended("stopped", f"stopped from outside ({type(error).__name__}) before finishing")
            raise
        finally:
            self.results.wall_seconds = time.perf_counter() - start
            self.results.finished_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            self.recorder.write_results()
            self.recorder.write_report()
            self.recorder.close()
        return self.results
