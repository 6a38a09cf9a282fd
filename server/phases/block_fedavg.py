"""Block FedAvg: for each modality held by several sites, federated rounds on its block across
them, starting from the largest site's block and preprocessing; the round with the lowest pooled
validation loss is kept. A modality held by one site keeps that site's block."""

from __future__ import annotations

import copy
import functools
import json
from typing import TYPE_CHECKING

from fedlego.common.lego import LegoBlock
from fedlego.common.packaging import PackageError, block_from_package, block_to_package, parse_block_package, serialize
from fedlego.common.protocol import MessageType, RoundRequest
from fedlego.common.signing import COORDINATOR
from fedlego.proto.fedlego_pb2 import BlockPackage
from fedlego.server.exchange import FederationError
from fedlego.server.phases.base import Phase
from fedlego.server.results import RoundsRecord
from fedlego.server.rounds import Round, Rounds, StateDict

if TYPE_CHECKING:
    from fedlego.server.orchestrator import Federation

Candidates = list[tuple[BlockPackage, LegoBlock]]


def chosen_block_name(modality: str) -> str:
    """The package file of the block a modality enters the merge with."""
    return f"block-{modality}.pb"


def ordered_candidates(federation: Federation, candidates: Candidates) -> Candidates:
    """A modality's checked blocks, the one its rounds start from (or the merge keeps) first: the
    most training patients, or with ``start-site = events`` the most training events the site
    released (its patients break ties)."""
    if federation.settings.rounds.start_site != "events":
        return candidates
    events = {d.site: d.n_train_events or 0 for d in federation.sites.values()}
    return sorted(candidates, key=lambda pair: (-events.get(pair[0].site, 0), -pair[0].n_samples, pair[0].site))


class BlockFedAvgPhase(Phase):
    """Each shared modality's rounds are timed and exchanged as ``block-fedavg:<modality>``."""

    name = "block-fedavg"

    def run(self, federation: Federation) -> None:
        chosen: dict[str, tuple[BlockPackage, LegoBlock]] = {}
        for modality, all_candidates in sorted(federation.models.candidates.items()):
            candidates = ordered_candidates(federation, all_candidates)
            if len(candidates) > 1 and federation.settings.rounds.block_rounds > 0:
                federation.log(f"phase block-fedavg:{modality}: {len(candidates)} sites")
                chosen[modality] = self._rounds(federation, modality, candidates)
            else:
                chosen[modality] = candidates[0]
                if len(candidates) > 1:
                    federation.log(
                        f"  {modality}: {len(candidates)} blocks and block-rounds=0: keeping "
                        f"{candidates[0][0].site}'s (start-site = {federation.settings.rounds.start_site})"
                    )
        for modality, (package, _) in chosen.items():
            federation.recorder.save_package(chosen_block_name(modality), serialize(package))
        federation.models.blocks = {m: b for m, (_, b) in chosen.items()}
        federation.models.block_packages = {m: p for m, (p, _) in chosen.items()}

    def restore(self, federation: Federation) -> None:
        packages = {}
        for modality in federation.models.candidates:
            data = federation.recorder.package(chosen_block_name(modality))
            if data is None:
                raise FederationError(
                    f"the checkpoint says block FedAvg finished, but {chosen_block_name(modality)} is missing"
                )
            try:
                packages[modality] = parse_block_package(data, chosen_block_name(modality))
            except PackageError as error:
                raise FederationError(str(error)) from error
        federation.models.block_packages = packages
        federation.models.blocks = {m: block_from_package(p) for m, p in packages.items()}

    @staticmethod
    def _rounds(federation: Federation, modality: str, candidates: Candidates) -> tuple[BlockPackage, LegoBlock]:
        """FedAvg/FedProx rounds on one modality's block across the sites holding it."""
        reference_package, block = candidates[0]
        settings, task, run_id = federation.settings, federation.models.task, federation.run_id
        rounds_config = settings.rounds

        def request(round_index: int, final: bool, state: StateDict) -> RoundRequest:
            block.load_state_dict(state, strict=not block.frozen_encoder)
            package = block_to_package(block, task, site=COORDINATOR, run_id=run_id)
            package.preprocessing_json = reference_package.preprocessing_json
            federation.sign(package)
            return RoundRequest(
                MessageType.BLOCK_ROUND,
                run_id,
                round_index,
                task,
                settings.training.for_round(0 if final else rounds_config.block_local_epochs),
                package=serialize(package),
            )

        patients: list[int | None] = []
        events: list[int | None] = []
        far: list[list] = []

        def record(finished: Round) -> None:
            patients.append(finished.validation_patients)
            events.append(finished.validation_events)
            federation.record_far_sites(f"block-fedavg:{modality}", finished, far)
            federation.recorder.audit(
                "fedavg-round",
                modality=modality,
                round=finished.index,
                participants=sorted(federation.exchange.site(n) for n in finished.answered),
                validation_loss=finished.validation_loss,
            )

        sites = sorted(p.site for p, _ in candidates)
        rounds = Rounds(
            rounds_config.block_rounds,
            [copy.deepcopy(block.adapter_state_dict())],
            patience=rounds_config.round_patience,
            margin=settings.fuse.min_improvement,
            unvalidated=rounds_config.unvalidated_rounds,
        )
        try:
            rounds.run(
                [n for n, d in federation.sites.items() if d.site in sites],
                request,
                functools.partial(federation.exchange, f"block-fedavg:{modality}"),
                record,
                aggregate=functools.partial(federation.combine, optimizer=rounds_config.server_step()),
                robust=rounds_config.round_aggregation != "mean",
                refuse=functools.partial(federation.exchange.refuse, f"block-fedavg:{modality}"),
                weights=rounds_config.site_weights,
            )
        except FederationError as error:  # not even the first round: the largest site's block stands
            federation.log(f"  block-fedavg:{modality}: {error}; keeping {reference_package.site}'s block")
            federation.results.rounds[f"block:{modality}"] = RoundsRecord(sites=sites, cut_short=f"round 0: {error}")
            return candidates[0]
        best = rounds.best()
        if rounds.cut_short:
            federation.log(f"  block-fedavg:{modality} rounds cut short ({rounds.cut_short}): keeping round {best}")
        block.load_state_dict(rounds.states[best], strict=not block.frozen_encoder)
        block.n_samples = sum(p.n_samples for p, _ in candidates)
        block.preprocessing = json.loads(reference_package.preprocessing_json or "null")
        federation.results.rounds[f"block:{modality}"] = RoundsRecord(
            validation_loss=rounds.history,
            kept_round=best,
            sites=sites,
            validation_patients=patients,
            validation_events=events,
            far_sites=far or None,
            stopped_early=rounds.stopped_early or None,
            cut_short=rounds.cut_short,
        )
        package = block_to_package(block, task, site="fedavg:" + "+".join(sites), run_id=run_id)
        return federation.sign(package), block
