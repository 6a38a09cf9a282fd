"""Fuse: federated LegoFuse rounds across the sites holding at least two merged modalities; each
round is checkpointed and a resumed run continues after the last finished round. The round with
the lowest pooled validation loss is kept (round 0, the merge, unless a later one is better by
``min-improvement``)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from fedlego.common.aggregation import FUSE_AGGREGATIONS, ServerOptimizer, dp_average_updates
from fedlego.common.packaging import fused_to_package, serialize
from fedlego.common.privacy import CentralAccountant
from fedlego.common.protocol import MessageType, RoundReply, RoundRequest, SiteDescription
from fedlego.common.workflow import fuse_model, fuse_weight_decay
from fedlego.server.exchange import FederationError
from fedlego.server.phases.base import Phase, PhaseState
from fedlego.server.results import FusePrivacy, RoundsRecord
from fedlego.server.rounds import Round, Rounds, StateDict

if TYPE_CHECKING:
    from fedlego.server.orchestrator import Federation

FUSED = "fused.pb"
OPTIMIZER_STATE = "fuse-optimizer"


@dataclass
class FuseProgress(PhaseState):
    """The finished rounds: validation losses, participants, validation counts and how many
    round states are saved (``fuse-state-<i>``)."""

    history: list[float | None] = field(default_factory=list)
    participants: list[list[str]] = field(default_factory=list)
    validation_patients: list[int | None] = field(default_factory=list)
    validation_events: list[int | None] = field(default_factory=list)
    states: int = 0
    optimizer: bool = False
    """Whether the server optimizer's state is saved (``fuse-optimizer``)."""


def trainable_modalities(description: SiteDescription) -> set[str]:
    """The modalities a site holds at least min-cell training patients of (it sends 0 below)."""
    return {m for m, n in zip(description.modalities, description.n_train, strict=False) if n > 0}


def paired_nodes(sites: Mapping[int, SiteDescription], merged: set[str]) -> list[int]:
    """The sites that can take part in fuse rounds: at least two merged modalities, each with
    min-cell training patients (a site under it for one of them would refuse every round)."""
    return [node for node, d in sites.items() if len(merged & trainable_modalities(d)) >= 2]


class FusePhase(Phase):
    """Skipped (and no fused model) when no site holds paired data or ``fuse-rounds`` is 0."""

    name = "fuse"

    def __init__(self) -> None:
        self._accountant: CentralAccountant | None = None

    def restore(self, federation: Federation) -> None:
        recorder = federation.recorder
        federation.models.fused = federation.reload_model(FUSED) if recorder.package(FUSED) is not None else None

    def run(self, federation: Federation) -> None:
        models, settings, recorder = federation.models, federation.settings, federation.recorder
        rounds_config, task = settings.rounds, models.task
        paired = paired_nodes(federation.sites, set(models.blocks))
        if not paired or rounds_config.fuse_rounds < 1:
            federation.log("phase fuse skipped: no site holds paired data" if not paired else "phase fuse skipped")
            models.fused = None
            return
        federation.log(f"phase fuse: {rounds_config.fuse_rounds} rounds on {len(paired)} paired sites")
        model = fuse_model(models.blocks, settings.fuse, settings.merge)
        base = serialize(federation.sign(fused_to_package(model, models.block_packages, federation.run_id)))
        mu = FUSE_AGGREGATIONS[rounds_config.fuse_aggregation](rounds_config.proximal_mu)
        training = settings.training
        fuse_training = replace(
            training,
            learning_rate=settings.fuse.learning_rate,
            batch_size=settings.fuse.batch_size,
            weight_decay=fuse_weight_decay(settings.fuse, training.weight_decay),
        )
        rounds = Rounds(
            rounds_config.fuse_rounds,
            [model.fusion_state_dict()],
            patience=rounds_config.round_patience,
            margin=settings.fuse.min_improvement,
            unvalidated=rounds_config.unvalidated_rounds,
        )
        optimizer = rounds_config.server_step()
        progress = FuseProgress.load(recorder, self.name)
        if progress.states:
            rounds.history = list(progress.history)
            rounds.states = [recorder.load_tensors(f"fuse-state-{i}") for i in range(progress.states)]
            if progress.optimizer:
                optimizer.load(recorder.load_tensors(OPTIMIZER_STATE))
        else:
            recorder.save_tensors("fuse-state-0", rounds.states[0])
        far: list[list] = []
        first_round = rounds.next_round

        def request(round_index: int, final: bool, state: StateDict) -> RoundRequest:
            return RoundRequest(
                MessageType.FUSE_ROUND,
                federation.run_id,
                round_index,
                task,
                fuse_training.for_round(0 if final else rounds_config.fuse_local_epochs),
                proximal_mu=mu,
                # the model travels once, again after a resume (sites may have lost it)
                package=base if round_index == first_round else None,
                state=dict(state) if round_index > 0 else None,
            )

        def record(finished: Round) -> None:
            progress.participants.append(sorted(federation.exchange.site(n) for n in finished.answered))
            progress.validation_patients.append(finished.validation_patients)
            progress.validation_events.append(finished.validation_events)
            federation.record_far_sites("fuse", finished, far)
            recorder.audit(
                "fuse-round",
                round=finished.index,
                participants=progress.participants[-1],
                validation_loss=finished.validation_loss,
                trained=not finished.final,
            )
            if recorder.checkpoint is not None:
                recorder.save_tensors(f"fuse-state-{len(rounds.states) - 1}", rounds.states[-1])
                recorder.save_tensors(OPTIMIZER_STATE, optimizer.state())
                progress.history, progress.states, progress.optimizer = list(rounds.history), len(rounds.states), True
                progress.save(recorder, self.name)

        try:
            rounds.run(
                paired,
                request,
                functools.partial(federation.exchange, "fuse"),
                record,
                aggregate=functools.partial(self._aggregate, federation, optimizer),
                drop_lost=True,  # a site that dropped out is not waited for again
                robust=rounds_config.round_aggregation != "mean",
                refuse=functools.partial(federation.exchange.refuse, "fuse"),
                weights=rounds_config.site_weights,
            )
        except FederationError as error:  # not even the first round: no fused model, the merge stands
            federation.log(f"  fuse: {error}; no fused model (the merged model stands)")
            federation.results.rounds["fuse"] = RoundsRecord(cut_short=f"round 0: {error}")
            models.fused = None
            return
        best = rounds.best(settings.fuse.min_improvement)
        if rounds.cut_short:
            federation.log(f"  fuse rounds cut short ({rounds.cut_short}): keeping round {best}")
        model.load_state_dict(rounds.states[best], strict=False)
        counts = model.parameter_counts()
        federation.results.rounds["fuse"] = RoundsRecord(
            validation_loss=rounds.history,
            kept_round=best,
            participants=progress.participants,
            validation_patients=progress.validation_patients,
            validation_events=progress.validation_events,
            trainable=counts["trainable"],
            total=counts["total"],
            far_sites=far or None,
            stopped_early=rounds.stopped_early or None,
            cut_short=rounds.cut_short,
        )
        package = federation.sign(fused_to_package(model, models.block_packages, federation.run_id))
        recorder.save_package(FUSED, serialize(package))
        recorder.audit("fused", content_hash=package.content_hash.hex(), kept_round=best)
        models.fused = package

    def _aggregate(
        self,
        federation: Federation,
        optimizer: ServerOptimizer,
        reference: StateDict,
        answered: dict[int, RoundReply],
        counts: list[float],
        asked: int,
    ) -> StateDict:
        """The round's aggregate (``round-aggregation``), or with ``fuse-dp-noise`` > 0 central
        DP-FedAvg (clipped site updates, Gaussian noise, unweighted mean; the spent budget is
        recorded), stepped from ``reference`` by the server optimizer."""
        dp = federation.settings.fuse_privacy
        if dp.noise <= 0:
            return federation.combine(reference, answered, counts, asked, optimizer)
        record = federation.results.privacy_record()
        if record.fuse is None:
            record.fuse = FusePrivacy()
        fuse = record.fuse
        if self._accountant is None:  # replays the rounds recorded before a resume
            self._accountant = CentralAccountant(dp.noise, dp.clip, dp.delta)
            for rate in fuse.sample_rates:
                self._accountant.step(rate)
        state, info = dp_average_updates(reference, [reply.state for reply in answered.values()], dp.clip, dp.noise)
        rate = len(answered) / max(asked, 1)
        self._accountant.step(rate)
        fuse.sample_rates.append(rate)
        fuse.clipped_updates.append(info["clipped"])
        for key, value in self._accountant.summary().items():
            setattr(fuse, key, value)
        federation.log(f"  fuse DP: epsilon {fuse.epsilon:.3f} (delta {fuse.delta:g}), {fuse.rounds} rounds")
        return optimizer.step(reference, state)
