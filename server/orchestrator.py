"""The coordinator's phases over any transport: describe, block (+ FedAvg per modality), upload
and merge, evaluate, fuse rounds, final evaluation. Orchestration only: messages go through
``server.exchange``, files through ``server.recorder``, the science is in ``fedlego.common``.
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from fedlego.common.aggregation import FUSE_AGGREGATIONS, combine_states, dp_average_updates
from fedlego.common.config import RunConfig
from fedlego.common.data.presets import preprocessing_for
from fedlego.common.lego import LegoBlock, LegoMerge
from fedlego.common.packaging import (
    PackageError,
    block_to_package,
    fused_to_package,
    merged_to_package,
    model_from_package,
    parse_block_package,
    parse_model_package,
    serialize,
)
from fedlego.common.privacy import CentralAccountant
from fedlego.common.protocol import (
    BlockReply,
    BlockRequest,
    DescribeRequest,
    EvaluateRequest,
    MessageType,
    RoundReply,
    RoundRequest,
    SiteDescription,
)
from fedlego.common.signing import COORDINATOR, load_signing_key, load_trusted_sites, sign_package
from fedlego.common.tasks import Task
from fedlego.common.workflow import fuse_model, fuse_weight_decay
from fedlego.proto.fedlego_pb2 import BlockPackage, ModelPackage
from fedlego.server.checks import aggregate_metrics, agree_task, check_packages, undeclared
from fedlego.server.exchange import FederationError, PhaseExchange
from fedlego.server.recorder import RecordError, RunRecorder
from fedlego.server.results import (
    BlockPrivacy,
    Failure,
    FusePrivacy,
    Refusal,
    RoundsRecord,
    RunResults,
    Signatures,
)
from fedlego.server.rounds import Round, Rounds, StateDict
from fedlego.server.transport import Transport, TransportClosed

__all__ = ["Federation", "FederationError"]


@dataclass
class Phase:
    """A checkpointed step of the run: ``run`` does it; on a resume after it finished, ``restore``
    reloads what it produced instead. ``applies`` False: skipped and not recorded."""

    name: str
    run: Callable[[], None]
    restore: Callable[[], None] = lambda: None
    applies: Callable[[], bool] = lambda: True


@dataclass
class Models:
    """What the phases produce and pass on."""

    task: Task | None = None
    blocks: dict[str, LegoBlock] = field(default_factory=dict)
    block_packages: dict[str, BlockPackage] = field(default_factory=dict)
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
        self._fuse_accountant: CentralAccountant | None = None

    @property
    def results(self) -> RunResults:
        """The results so far (the checkpoint's after a resume)."""
        return self.recorder.results

    def phases(self) -> list[Phase]:
        """The checkpointed phases, in order."""
        return [
            Phase("merge", self._merge_phase, self._restore_merge),
            Phase("evaluate-merge", lambda: self.evaluate("merge", self.models.merged)),
            Phase("fuse", self._fuse_phase, self._restore_fuse),
            Phase(
                "evaluate-fuse",
                lambda: self.evaluate("fuse", self.models.fused),
                applies=lambda: self.models.fused is not None,
            ),
        ]

    # -- set-up ----------------------------------------------------------------------------
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

    def _sign(self, package):
        """Sign a package made by the coordinator (blocks averaged here, merged and fused models)."""
        if self.signing_key is not None:
            sign_package(package, self.signing_key, COORDINATOR)
        return package

    def wait_for_sites(self) -> list[int]:
        """Nodes connected within the wait timeout (at least ``min_sites``)."""
        coordinator = self.settings.coordinator
        deadline = time.monotonic() + coordinator.wait_timeout
        nodes = self.transport.node_ids()
        while len(nodes) < coordinator.min_sites and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = self.transport.node_ids()
        if len(nodes) < coordinator.min_sites:
            raise FederationError(
                f"only {len(nodes)} sites connected within {coordinator.wait_timeout:.0f} s, "
                f"min-sites is {coordinator.min_sites}"
            )
        return sorted(nodes)

    # -- phases ----------------------------------------------------------------------------
    def _schema_sha256(self) -> str | None:
        """The SHA-256 of the run's consortium schema (``schema`` key), recorded in the results."""
        path = self.settings.coordinator.schema
        if not path:
            return None
        from fedlego.common.data.schema import ConsortiumSchema, schema_hash

        self.results.schema_sha256 = schema_hash(ConsortiumSchema.read(path))
        return self.results.schema_sha256

    def describe(self, nodes: list[int]) -> Task:
        """Every site reports what it holds (counts only)."""
        self.log("phase describe")
        answered = self.exchange("describe", {n: DescribeRequest() for n in nodes})
        traffic = self.results.phase("describe").bytes
        schema = self._schema_sha256()
        for node, reply in answered.items():
            description = reply.description
            traffic[description.site] = traffic.pop(f"node-{node}")
            self.exchange.site_names[node] = description.site
            if schema is not None and description.schema_sha256 != schema:
                checked = f"schema {description.schema_sha256[:12]}" if description.schema_sha256 else "no schema"
                reason = f"the site checked its data against {checked}, the run's consortium schema is {schema[:12]}"
                self.results.failures.append(Failure(description.site, "describe", reason))
                self.recorder.audit("site-refused", site=description.site, reason=reason)
                self.log(f"  describe: {description.site} refused: {reason}")
                continue
            self.sites[node] = description
            self.results.sites[description.site] = {k: v for k, v in description.to_dict().items() if k != "cut_points"}
        self.results.data = {d.site: d.data for d in self.sites.values() if d.data is not None} or None
        if not self.sites:
            reasons = "; ".join(f"{f.site}: {f.reason}" for f in self.results.failures if f.phase == "describe")
            raise FederationError("no site is left after the describe phase" + (f" ({reasons})" if reasons else ""))
        task = agree_task(list(self.sites.values()), note=lambda text: self.log(f"  describe: {text}"))
        self.results.task = task.to_dict()
        self.results.metric = task.metric_name
        return task

    def train_blocks(self, task: Task) -> list[BlockPackage]:
        """Every site trains a block per held modality and uploads the packages. Each site's
        upload is checkpointed as it arrives: a restarted coordinator asks only the sites that
        had not answered and reloads the verified uploads of the others."""
        self.log("phase block")
        request = BlockRequest(
            self.run_id,
            task,
            self.settings.model,
            self.settings.training,
            preprocessing_for(self.settings),
            self.settings.block_privacy(),
        )
        progress = self.recorder.progress.inside.setdefault("block", {"answered": [], "accepted": []})
        packages = [self._reload_upload(site, modality) for site, modality in progress["accepted"]]
        nodes = [n for n, d in self.sites.items() if d.modalities and d.site not in progress["answered"]]
        if progress["answered"]:
            self.log(
                f"  block: uploads of {', '.join(progress['answered'])} kept from before the restart; "
                f"asking {', '.join(self.exchange.site(n) for n in nodes) or 'no other site'}"
            )

        def received(node: int, reply: BlockReply) -> None:
            site = self.exchange.site(node)
            for modality, package in self._accept_uploads(node, reply):
                packages.append(package)
                progress["accepted"].append([site, modality])
            progress["answered"].append(site)
            self.recorder.save_progress()

        minimum = max(self.exchange.min_responses - len(progress["answered"]), 0)
        self.exchange("block", dict.fromkeys(nodes, request), minimum=minimum, on_answer=received)
        return packages

    def _accept_uploads(self, node: int, reply: BlockReply) -> list[tuple[str, BlockPackage]]:
        """One site's block reply: failures recorded, uploads saved and audited, packages that do
        not parse or that the site never declared refused; the rest returned by modality."""
        site = self.exchange.site(node)
        for modality, reason in reply.errors.items():
            self.results.failures.append(Failure(site, f"block:{modality}", reason))
            self.recorder.audit("block-failed", site=site, modality=modality, reason=reason.splitlines()[0])
            self.log(f"  block: {site}/{modality} failed: {reason.splitlines()[0]}")
        accepted = []
        for modality, data in reply.packages.items():
            self.recorder.save_package(self._upload_name(site, modality), data)
            self.recorder.audit(
                "package-received",
                site=site,
                modality=modality,
                sha256=hashlib.sha256(data).hexdigest(),
                bytes=len(data),
            )
            try:
                package = parse_block_package(data, f"upload from {site}")
            except PackageError as error:
                self.results.refused.append(Refusal(site, modality, str(error)))
                continue
            problem = undeclared(self.sites[node], modality, package)
            if problem is not None:
                self.results.refused.append(Refusal(site, modality, problem))
                self.recorder.audit("package-refused", site=site, modality=modality, reason=problem)
                self.log(f"  refused {site}/{modality}: {problem}")
                continue
            accepted.append((modality, package))
        return accepted

    @staticmethod
    def _upload_name(site: str, modality: str) -> str:
        return f"uploads/{site}-{modality}.pb"

    def _reload_upload(self, site: str, modality: str) -> BlockPackage:
        """A site's upload accepted before a restart, read back from the run folder."""
        data = self.recorder.package(self._upload_name(site, modality))
        if data is None:
            raise FederationError(f"the checkpoint says {site} uploaded {modality}, but its upload file is missing")
        try:
            return parse_block_package(data, f"upload from {site} (kept from before the restart)")
        except PackageError as error:
            raise FederationError(str(error)) from error

    def _site_nodes(self, sites: set[str]) -> list[int]:
        return [n for n, d in self.sites.items() if d.site in sites]

    def fedavg_block(self, modality: str, candidates, task: Task) -> tuple[BlockPackage, LegoBlock]:
        """FedAvg rounds on one modality's block across the sites holding it, starting from the
        largest site's block and its preprocessing; the round with the lowest validation loss
        (weighted over sites) is kept."""
        reference_package, block = candidates[0]
        rounds_config = self.settings.rounds

        def request(round_index: int, final: bool, state: StateDict) -> RoundRequest:
            block.load_state_dict(state, strict=not block.frozen_encoder)
            package = block_to_package(block, task, site=COORDINATOR, run_id=self.run_id)
            package.preprocessing_json = reference_package.preprocessing_json
            self._sign(package)
            return RoundRequest(
                MessageType.BLOCK_ROUND,
                self.run_id,
                round_index,
                task,
                self.settings.training.for_round(0 if final else rounds_config.block_local_epochs),
                package=serialize(package),
            )

        patients: list[int | None] = []
        events: list[int | None] = []

        def record(finished: Round) -> None:
            patients.append(finished.validation_patients)
            events.append(finished.validation_events)
            self.recorder.audit(
                "fedavg-round",
                modality=modality,
                round=finished.index,
                participants=sorted(self.exchange.site(n) for n in finished.answered),
                validation_loss=finished.validation_loss,
            )

        rounds = Rounds(rounds_config.block_rounds, [copy.deepcopy(block.adapter_state_dict())])
        rounds.run(
            self._site_nodes({p.site for p, _ in candidates}),
            request,
            functools.partial(self.exchange, f"block-fedavg:{modality}"),
            record,
            aggregate=self._combine,
            robust=self.settings.rounds.round_aggregation != "mean",
        )
        best = rounds.best()
        block.load_state_dict(rounds.states[best], strict=not block.frozen_encoder)
        block.n_samples = sum(p.n_samples for p, _ in candidates)
        block.preprocessing = json.loads(reference_package.preprocessing_json or "null")
        self.results.rounds[f"block:{modality}"] = RoundsRecord(
            validation_loss=rounds.history,
            kept_round=best,
            sites=sorted(p.site for p, _ in candidates),
            validation_patients=patients,
            validation_events=events,
        )
        package = block_to_package(
            block, task, site="fedavg:" + "+".join(sorted(p.site for p, _ in candidates)), run_id=self.run_id
        )
        return self._sign(package), block

    def merge(self, packages: list[BlockPackage], task: Task) -> None:
        """Check every package, FedAvg shared modalities if asked, and LegoMerge the blocks. The
        merge phase's time excludes the FedAvg rounds (phases ``block-fedavg:<modality>``)."""
        self.log(f"phase merge: checking {len(packages)} block packages")
        start = time.perf_counter()
        self.results.phase("merge").begin()
        contract = self.settings.model.contract(task)
        max_bytes = int(self.settings.coordinator.max_package_mb * 1024 * 1024)
        selection = check_packages(
            packages,
            contract,
            task,
            max_bytes,
            self.run_id,
            self.trusted,
            self.settings.model.max_encoder_parameters,
            self.settings.coordinator.max_weight_ratio,
        )
        for refusal in selection.refused:
            self.log(f"  refused {refusal.site}/{refusal.modality}: {refusal.reason}")
            self.recorder.audit("package-refused", site=refusal.site, modality=refusal.modality, reason=refusal.reason)
        for modality, candidates in selection.candidates.items():
            for package, _ in candidates:
                self.recorder.audit(
                    "package-verified",
                    site=package.site,
                    modality=modality,
                    content_hash=package.content_hash.hex(),
                    signed=package.HasField("signature"),
                )
        self.results.refused += selection.refused
        if not selection.candidates:
            raise FederationError(
                "no valid block package to merge: "
                + "; ".join(f"{r.site}/{r.modality}: {r.reason}" for r in selection.refused)
            )
        chosen: dict[str, tuple[BlockPackage, LegoBlock]] = {}
        fedavg_seconds = 0.0  # timed as phases of their own (block-fedavg:<modality>)
        for modality, candidates in sorted(selection.candidates.items()):
            if len(candidates) > 1 and self.settings.rounds.block_rounds > 0:
                self.log(f"phase block-fedavg:{modality}: {len(candidates)} sites")
                begin = time.perf_counter()
                chosen[modality] = self.fedavg_block(modality, candidates, task)
                fedavg_seconds += time.perf_counter() - begin
            else:
                chosen[modality] = candidates[0]
                if len(candidates) > 1:
                    self.log(
                        f"  {modality}: {len(candidates)} blocks and block-rounds=0: keeping the largest "
                        f"({candidates[0][0].site})"
                    )
        block_packages = {m: p for m, (p, _) in chosen.items()}
        self._record_block_privacy(block_packages)
        blocks = {m: b for m, (_, b) in chosen.items()}
        merge = self.settings.merge
        merged = LegoMerge(blocks, merge.latent_merge, merge.head_merge, merge.weighting)
        package = self._sign(merged_to_package(merged, block_packages, self.run_id))
        self.log(f"phase merge: LegoMerge of {', '.join(sorted(blocks))}")
        self.results.phase("merge").seconds += time.perf_counter() - start - fedavg_seconds
        self.results.phase("merge").end()
        self.results.merged_modalities = sorted(blocks)
        self.recorder.audit(
            "merged",
            modalities=sorted(blocks),
            weights=merged.weights,
            content_hash=package.content_hash.hex(),
            blocks={m: p.content_hash.hex() for m, p in block_packages.items()},
        )
        self.recorder.save_package("merged.pb", serialize(package))
        for modality, block_package in block_packages.items():
            self.recorder.save_package(f"block-{modality}.pb", serialize(block_package))
        self.models.blocks, self.models.block_packages, self.models.merged = blocks, block_packages, package

    def _merge_phase(self) -> None:
        self.merge(self.train_blocks(self.models.task), self.models.task)

    def _restore_merge(self) -> None:
        merged = self._reload("merged.pb")
        self.models.merged = merged
        self.models.blocks = dict(model_from_package(merged).blocks)
        self.models.block_packages = {p.modality: p for p in merged.blocks}

    def _reload(self, name: str) -> ModelPackage:
        data = self.recorder.package(name)
        if data is None:
            raise FederationError(f"the checkpoint says {name} was written, but it is missing")
        return parse_model_package(data, name)

    def evaluate(self, phase: str, model_package: ModelPackage) -> None:
        """Every site evaluates what it can of the model on its test patients."""
        self.log(f"phase evaluate ({phase})")
        request = EvaluateRequest(serialize(model_package))
        answered = self.exchange(f"evaluate-{phase}", dict.fromkeys(self.sites, request))
        for node, reply in answered.items():
            for model, reason in reply.errors.items():
                site = self.exchange.site(node)
                self.results.failures.append(Failure(site, f"evaluate-{phase}:{model}", reason))
                self.recorder.audit("evaluation-failed", site=site, model=model, reason=reason.splitlines()[0])
                self.log(f"  evaluate-{phase}: {site} could not evaluate {model}: {reason.splitlines()[0]}")
        per_site = {self.exchange.site(n): reply.results for n, reply in answered.items()}
        self.results.metrics[phase] = aggregate_metrics(per_site)

    def _fuse_phase(self) -> None:
        self.models.fused = self.fuse(self.models.blocks, self.models.block_packages, self.models.task)

    def _restore_fuse(self) -> None:
        self.models.fused = self._reload("fused.pb") if self.recorder.package("fused.pb") is not None else None

    def fuse(self, blocks: dict[str, LegoBlock], block_packages, task: Task) -> ModelPackage | None:
        """Federated LegoFuse rounds across sites holding at least two merged modalities; each
        round is checkpointed, and a resumed run continues after the last finished round."""
        modalities = set(blocks)
        rounds_config = self.settings.rounds
        paired = [n for n, d in self.sites.items() if len(modalities & set(d.modalities)) >= 2 and sum(d.n_train) > 0]
        if not paired or rounds_config.fuse_rounds < 1:
            self.log("phase fuse skipped: no site holds paired data" if not paired else "phase fuse skipped")
            return None
        self.log(f"phase fuse: {rounds_config.fuse_rounds} rounds on {len(paired)} paired sites")
        model = fuse_model(blocks, self.settings.fuse, self.settings.merge)
        base = serialize(self._sign(fused_to_package(model, block_packages, self.run_id)))
        mu = FUSE_AGGREGATIONS[rounds_config.fuse_aggregation](rounds_config.proximal_mu)
        training = self.settings.training
        fuse_training = replace(
            training,
            learning_rate=self.settings.fuse.learning_rate,
            batch_size=self.settings.fuse.batch_size,
            weight_decay=fuse_weight_decay(self.settings.fuse, training.weight_decay),
        )
        rounds, participants = Rounds(rounds_config.fuse_rounds, [model.fusion_state_dict()]), []
        patients: list[int | None] = []
        events: list[int | None] = []
        done = self.recorder.progress.inside.get("fuse")
        if done:
            rounds.history, participants = list(done["history"]), list(done["participants"])
            patients = list(done.get("validation_patients", [None] * len(participants)))
            events = list(done.get("validation_events", [None] * len(participants)))
            rounds.states = [self.recorder.load_tensors(f"fuse-state-{i}") for i in range(done["states"])]
        else:
            self.recorder.save_tensors("fuse-state-0", rounds.states[0])
        first_round = rounds.next_round

        def request(round_index: int, final: bool, state: StateDict) -> RoundRequest:
            return RoundRequest(
                MessageType.FUSE_ROUND,
                self.run_id,
                round_index,
                task,
                fuse_training.for_round(0 if final else rounds_config.fuse_local_epochs),
                proximal_mu=mu,
                # the model travels once, again after a resume (sites may have lost it)
                package=base if round_index == first_round else None,
                state=dict(state) if round_index > 0 else None,
            )

        def record(finished: Round) -> None:
            participants.append(sorted(self.exchange.site(n) for n in finished.answered))
            patients.append(finished.validation_patients)
            events.append(finished.validation_events)
            self.recorder.audit(
                "fuse-round",
                round=finished.index,
                participants=participants[-1],
                validation_loss=finished.validation_loss,
                trained=not finished.final,
            )
            if self.recorder.checkpoint is not None:
                self.recorder.save_tensors(f"fuse-state-{len(rounds.states) - 1}", rounds.states[-1])
                self.recorder.progress.inside["fuse"] = {
                    "history": rounds.history,
                    "participants": participants,
                    "validation_patients": patients,
                    "validation_events": events,
                    "states": len(rounds.states),
                }
                self.recorder.save_progress()

        rounds.run(
            paired,
            request,
            functools.partial(self.exchange, "fuse"),
            record,
            aggregate=self._aggregate_fuse,
            drop_lost=True,  # a site that dropped out is not waited for again
            robust=self.settings.rounds.round_aggregation != "mean",
        )
        best = rounds.best(self.settings.fuse.min_improvement)
        model.load_state_dict(rounds.states[best], strict=False)
        counts = model.parameter_counts()
        self.results.rounds["fuse"] = RoundsRecord(
            validation_loss=rounds.history,
            kept_round=best,
            participants=participants,
            validation_patients=patients,
            validation_events=events,
            trainable=counts["trainable"],
            total=counts["total"],
        )
        package = self._sign(fused_to_package(model, block_packages, self.run_id))
        self.recorder.save_package("fused.pb", serialize(package))
        self.recorder.audit("fused", content_hash=package.content_hash.hex(), kept_round=best)
        return package

    # -- differential privacy (fedlego.common.privacy) -------------------------------------
    def _combine(
        self, reference: StateDict, answered: dict[int, RoundReply], counts: list[float], asked: int
    ) -> StateDict:
        """A round's parameters from the sites' replies (``round-aggregation``, ``update-norm-bound``)."""
        rounds = self.settings.rounds
        states = [reply.state for reply in answered.values()]
        return combine_states(rounds.round_aggregation, states, counts, reference, rounds.update_norm_bound)

    def _aggregate_fuse(
        self, reference: StateDict, answered: dict[int, RoundReply], counts: list[float], asked: int
    ) -> StateDict:
        """FedAvg of the fusion parameters, or with ``fuse-dp-noise`` > 0 central DP-FedAvg
        (clipped site updates, Gaussian noise, unweighted mean); records the spent budget."""
        states = [reply.state for reply in answered.values()]
        dp = self.settings.fuse_privacy
        if dp.noise <= 0:
            return self._combine(reference, answered, counts, asked)
        privacy = self.results.privacy_record()
        if privacy.fuse is None:
            privacy.fuse = FusePrivacy()
        record = privacy.fuse
        if self._fuse_accountant is None:  # replays the rounds recorded before a resume
            self._fuse_accountant = CentralAccountant(dp.noise, dp.clip, dp.delta)
            for rate in record.sample_rates:
                self._fuse_accountant.step(rate)
        state, info = dp_average_updates(reference, states, dp.clip, dp.noise)
        self._fuse_accountant.step(len(states) / max(asked, 1))
        record.sample_rates.append(len(states) / max(asked, 1))
        record.clipped_updates.append(info["clipped"])
        for key, value in self._fuse_accountant.summary().items():
            setattr(record, key, value)
        self.log(f"  fuse DP: epsilon {record.epsilon:.3f} (delta {record.delta:g}), {record.rounds} rounds")
        return state

    def _record_block_privacy(self, block_packages: dict[str, BlockPackage]) -> None:
        """The DP-SGD budget each merged block reports in its manifest (if trained with DP)."""
        for modality, package in block_packages.items():
            if "dp_epsilon" in package.metrics:
                privacy = self.results.privacy_record()
                privacy.blocks = privacy.blocks or {}
                privacy.blocks[modality] = BlockPrivacy(
                    site=package.site,
                    epsilon=package.metrics["dp_epsilon"],
                    delta=package.metrics.get("dp_delta"),
                    noise_multiplier=package.metrics.get("dp_noise_multiplier"),
                    clip=package.metrics.get("dp_clip"),
                )

    def _ended(self, status: str, reason: str) -> None:
        self.results.status = status
        self.results.error = reason
        self.log(f"federation {status}: {reason}")
        self.recorder.audit(f"run-{status}", reason=reason)

    def run(self) -> RunResults:
        """All phases; on a fatal error the results so far are written with the reason."""
        start = time.perf_counter()
        try:
            try:
                self.recorder.open(self.results.config)
            except RecordError as error:
                raise FederationError(str(error)) from error
            self.load_keys()
            self.models.task = self.describe(self.wait_for_sites())
            for phase in self.phases():
                if self.recorder.done(phase.name):
                    phase.restore()
                elif phase.applies():
                    phase.run()
                    self.recorder.save_progress(phase.name)
            self.results.status = "completed"
            self.recorder.audit("run-completed")
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
