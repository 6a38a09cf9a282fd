"""The coordinator's phases over any transport: describe, block (+ FedAvg per modality), upload
and merge, evaluate, fuse rounds, final evaluation. Orchestration only; the science is in
``fedlego.common``.
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedlego.common.aggregation import average_states, dp_average_updates
from fedlego.common.federation import FederationSettings
from fedlego.common.lego import LegoBlock, LegoFuse, LegoMerge
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
from fedlego.common.privacy import CentralAccountant, privacy_config_to_json
from fedlego.common.signing import COORDINATOR, load_signing_key, load_trusted_sites, sign_package
from fedlego.proto.fedlego_pb2 import BlockPackage
from fedlego.server.audit import AuditLog
from fedlego.server.checkpoint import Checkpoint
from fedlego.server.checks import aggregate_metrics, agree_task, check_packages
from fedlego.server.report import write_report
from fedlego.server.rounds import Round, Rounds, StateDict
from fedlego.server.transport import Payload, Transport


class FederationError(RuntimeError):
    """The run cannot go on (too few sites answered, nothing to merge...)."""


class Federation:
    """One federated run: call ``run()``; results are returned and written to ``out_dir``."""

    def __init__(self, transport: Transport, settings: FederationSettings, log: Callable[[str], None] = print) -> None:
        self.transport = transport
        self.settings = settings
        self.log = log
        self.run_id = settings.run_id()
        self.out_dir = Path(settings.out_dir) if settings.out_dir else None
        self.sites: dict[int, dict[str, Any]] = {}
        self.trusted = None
        self.signing_key = None
        self.audit: AuditLog | None = None
        self.checkpoint = Checkpoint(self.out_dir / "checkpoint") if self.out_dir else None
        self.completed: list[str] = []
        self.progress: dict[str, Any] = {}
        self.results: dict[str, Any] = {
            "kind": "federated",
            "run_id": self.run_id,
            "config": asdict(settings),
            "sites": {},
            "failures": [],
            "refused": [],
            "phases": {},
            "metrics": {},
            "rounds": {},
        }

    def load_keys(self) -> None:
        """The trusted signers and the coordinator's signing key, when configured."""
        try:
            if self.settings.trusted_sites:
                self.trusted = load_trusted_sites(Path(self.settings.trusted_sites))
            if self.settings.coordinator_key:
                self.signing_key = load_signing_key(Path(self.settings.coordinator_key))
        except ValueError as error:
            raise FederationError(str(error)) from error
        self.results["signatures"] = {"required": self.trusted is not None, "models_signed": bool(self.signing_key)}

    def _sign(self, package):
        """Sign a package made by the coordinator (blocks averaged here, merged and fused models)."""
        if self.signing_key is not None:
            sign_package(package, self.signing_key, COORDINATOR)
        return package

    def _audit(self, event: str, **fields: Any) -> None:
        if self.audit is not None:
            self.results["audit_head"] = self.audit.append(event, run_id=self.run_id, **fields)

    def _checkpoint(self, phase: str | None = None) -> None:
        """Record a finished phase and the progress inside the current one, before going on."""
        if phase is not None and phase not in self.completed:
            self.completed.append(phase)
        if self.checkpoint is not None:
            self.checkpoint.save(
                {"run_id": self.run_id, "completed": self.completed, "progress": self.progress, "results": self.results}
            )
            self._write_results()

    def open_records(self) -> None:
        """Open the audit log and, when the run folder holds a checkpoint of this run, resume it."""
        if self.out_dir is None:
            return
        try:
            self.audit = AuditLog(self.out_dir / "audit.jsonl")
            state = self.checkpoint.load() if self.checkpoint else None
        except ValueError as error:
            raise FederationError(str(error)) from error
        if state is None:
            self._audit("run-started", settings=self.results["config"])
            return
        if state.get("run_id") != self.run_id:
            raise FederationError(
                f"{self.out_dir} holds a checkpoint of run {state.get('run_id')!r}, not {self.run_id!r}: "
                "resume with the same settings or use another output folder"
            )
        self.completed, self.progress = list(state["completed"]), dict(state.get("progress", {}))
        self.results = state["results"]
        self.results["resumed"] = self.results.get("resumed", 0) + 1
        self.log(f"resuming run {self.run_id}: finished phases {self.completed}")
        self._audit("run-resumed", completed=self.completed)

    def _reload(self, name: str):
        package = parse_model_package((self.out_dir / "packages" / name).read_bytes(), name)
        return package, model_from_package(package)

    # -- transport -------------------------------------------------------------------------
    def _site(self, node: int) -> str:
        return self.sites.get(node, {}).get("site", f"node-{node}")

    def _exchange(
        self, phase: str, message_type: str, requests: dict[int, Payload], minimum: int | None = None
    ) -> dict[int, Payload]:
        """Send, record bytes and failures, and insist on a minimum of answers."""
        record = self.results["phases"].setdefault(phase, {"seconds": 0.0, "bytes": {}})
        start = time.perf_counter()
        replies = self.transport.exchange(message_type, requests, self.settings.phase_timeout)
        record["seconds"] += time.perf_counter() - start
        answered: dict[int, Payload] = {}
        for node, reply in replies.items():
            traffic = record["bytes"].setdefault(self._site(node), {"sent": 0, "received": 0})
            traffic["sent"] += reply.bytes_sent
            traffic["received"] += reply.bytes_received
            if reply.error is not None:
                self.results["failures"].append({"site": self._site(node), "phase": phase, "reason": reply.error})
                self._audit("site-failed", site=self._site(node), phase=phase, reason=reply.error.splitlines()[0])
                self.log(f"  {phase}: {self._site(node)} failed: {reply.error.splitlines()[0]}")
            elif reply.payload is not None:
                answered[node] = reply.payload
        needed = min(minimum if minimum is not None else self.settings.min_responses, len(requests))
        self.log(f"  {phase}: {len(answered)}/{len(requests)} sites answered")
        if len(answered) < needed:
            raise FederationError(
                f"phase {phase}: only {len(answered)} of {len(requests)} sites answered, {needed} needed"
            )
        return answered

    # -- phases ----------------------------------------------------------------------------
    def wait_for_sites(self) -> list[int]:
        """Nodes connected within the wait timeout (at least ``min_sites``)."""
        deadline = time.monotonic() + self.settings.wait_timeout
        nodes = self.transport.node_ids()
        while len(nodes) < self.settings.min_sites and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = self.transport.node_ids()
        if len(nodes) < self.settings.min_sites:
            raise FederationError(
                f"only {len(nodes)} sites connected within {self.settings.wait_timeout:.0f} s, "
                f"min-sites is {self.settings.min_sites}"
            )
        return sorted(nodes)

    def describe(self, nodes: list[int]):
        """Every site reports what it holds (counts only)."""
        self.log("phase describe")
        answered = self._exchange("describe", "query.describe", {n: Payload() for n in nodes})
        traffic = self.results["phases"]["describe"]["bytes"]
        for node, payload in answered.items():
            description = json.loads(payload.config["description"])
            traffic[description["site"]] = traffic.pop(f"node-{node}")
            self.sites[node] = description
            self.results["sites"][description["site"]] = {k: v for k, v in description.items() if k != "cut_points"}
        task = agree_task(list(self.sites.values()))
        self.results["task"] = task.to_dict()
        self.results["metric"] = task.metric_name
        return task

    def train_blocks(self, task) -> list[BlockPackage]:
        """Every site trains a block per held modality and uploads the packages."""
        self.log("phase block")
        config = {
            "task": json.dumps(task.to_dict()),
            "run-id": self.run_id,
            "model": json.dumps(asdict(self.settings.model_config())),
            "training": json.dumps(asdict(self.settings.block_training())),
            "preprocessing": json.dumps(self.settings.preprocessing()),
            "privacy": privacy_config_to_json(self.settings.block_privacy()),
        }
        nodes = [n for n, d in self.sites.items() if d["modalities"]]
        answered = self._exchange("block", "train.block", {n: Payload(config=dict(config)) for n in nodes})
        packages = []
        for node, payload in answered.items():
            for key, value in payload.config.items():
                if key.startswith("package."):
                    self._save(f"uploads/{self._site(node)}-{key[8:]}.pb", value)
                    self._audit(
                        "package-received",
                        site=self._site(node),
                        modality=key[8:],
                        sha256=hashlib.sha256(value).hexdigest(),
                        bytes=len(value),
                    )
                    try:
                        packages.append(parse_block_package(value, f"upload from {self._site(node)}"))
                    except PackageError as error:
                        self.results["refused"].append(
                            {"site": self._site(node), "modality": key[8:], "reason": str(error)}
                        )
        return packages

    def _site_nodes(self, sites: set[str]) -> list[int]:
        return [n for n, d in self.sites.items() if d["site"] in sites]

    def fedavg_block(self, modality: str, candidates, task) -> tuple[BlockPackage, LegoBlock]:
        """FedAvg rounds on one modality's block across the sites holding it, starting from the
        largest site's block and its preprocessing; the round with the lowest validation loss
        (weighted over sites) is kept."""
        reference_package, block = candidates[0]

        def request(round_index: int, final: bool, state: StateDict) -> Payload:
            block.load_state_dict(state)
            package = block_to_package(block, task, site=COORDINATOR, run_id=self.run_id)
            package.preprocessing_json = reference_package.preprocessing_json
            self._sign(package)
            return Payload(
                config={
                    "package": serialize(package),
                    "epochs": 0 if final else self.settings.block_local_epochs,
                    "task": json.dumps(task.to_dict()),
                    "proximal-mu": 0.0,
                }
            )

        def record(finished: Round) -> None:
            self._audit(
                "fedavg-round",
                modality=modality,
                round=finished.index,
                participants=sorted(self._site(n) for n in finished.answered),
                validation_loss=finished.validation_loss,
            )

        rounds = Rounds(self.settings.block_rounds, [copy.deepcopy(block.state_dict())])
        rounds.run(
            self._site_nodes({p.site for p, _ in candidates}),
            request,
            functools.partial(self._exchange, f"block-fedavg:{modality}", "train.blockround"),
            record,
        )
        best = rounds.best()
        block.load_state_dict(rounds.states[best])
        block.n_samples = sum(p.n_samples for p, _ in candidates)
        block.preprocessing = json.loads(reference_package.preprocessing_json or "null")
        self.results["rounds"][f"block:{modality}"] = {
            "validation_loss": rounds.history,
            "kept_round": best,
            "sites": sorted(p.site for p, _ in candidates),
        }
        package = block_to_package(
            block, task, site="fedavg:" + "+".join(sorted(p.site for p, _ in candidates)), run_id=self.run_id
        )
        return self._sign(package), block

    def merge(self, packages: list[BlockPackage], task):
        """Check every package, FedAvg shared modalities if asked, and LegoMerge the blocks."""
        self.log("phase merge")
        start = time.perf_counter()
        contract = self.settings.model_config().contract(task)
        max_bytes = int(self.settings.max_package_mb * 1024 * 1024)
        selection = check_packages(packages, contract, task, max_bytes, self.run_id, self.trusted)
        for refusal in selection.refused:
            self.log(f"  refused {refusal.site}/{refusal.modality}: {refusal.reason}")
            self._audit("package-refused", site=refusal.site, modality=refusal.modality, reason=refusal.reason)
        for modality, candidates in selection.candidates.items():
            for package, _ in candidates:
                self._audit(
                    "package-verified",
                    site=package.site,
                    modality=modality,
                    content_hash=package.content_hash.hex(),
                    signed=package.HasField("signature"),
                )
        self.results["refused"] += [asdict(r) for r in selection.refused]
        if not selection.candidates:
            raise FederationError(
                "no valid block package to merge: "
                + "; ".join(f"{r.site}/{r.modality}: {r.reason}" for r in selection.refused)
            )
        chosen: dict[str, tuple[BlockPackage, LegoBlock]] = {}
        for modality, candidates in sorted(selection.candidates.items()):
            if len(candidates) > 1 and self.settings.block_rounds > 0:
                chosen[modality] = self.fedavg_block(modality, candidates, task)
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
        merged = LegoMerge(blocks, self.settings.latent_merge, self.settings.head_merge, self.settings.weighting)
        package = self._sign(merged_to_package(merged, block_packages, self.run_id))
        self.results["phases"].setdefault("merge", {"seconds": 0.0, "bytes": {}})["seconds"] += (
            time.perf_counter() - start
        )
        self.results["merged_modalities"] = sorted(blocks)
        self._audit(
            "merged",
            modalities=sorted(blocks),
            weights=merged.weights,
            content_hash=package.content_hash.hex(),
            blocks={m: p.content_hash.hex() for m, p in block_packages.items()},
        )
        self._save("merged.pb", serialize(package))
        for modality, block_package in block_packages.items():
            self._save(f"block-{modality}.pb", serialize(block_package))
        return blocks, block_packages, package

    def evaluate(self, phase: str, model_package) -> None:
        """Every site evaluates what it can of the model on its test patients."""
        self.log(f"phase evaluate ({phase})")
        request = {"model": serialize(model_package)}
        nodes = list(self.sites)
        answered = self._exchange(
            f"evaluate-{phase}", "evaluate.models", {n: Payload(config=dict(request)) for n in nodes}
        )
        per_site = {self._site(n): json.loads(p.config["results"]) for n, p in answered.items()}
        self.results["metrics"][phase] = aggregate_metrics(per_site)

    def fuse(self, blocks: dict[str, LegoBlock], block_packages, task):
        """Federated LegoFuse rounds across sites holding at least two merged modalities; each
        round is checkpointed, and a resumed run continues after the last finished round."""
        modalities = set(blocks)
        paired = [
            n for n, d in self.sites.items() if len(modalities & set(d["modalities"])) >= 2 and sum(d["n_train"]) > 0
        ]
        if not paired or self.settings.fuse_rounds < 1:
            self.log("phase fuse skipped: no site holds paired data" if not paired else "phase fuse skipped")
            return None
        self.log(f"phase fuse: {self.settings.fuse_rounds} rounds on {len(paired)} paired sites")
        model = LegoFuse(
            blocks, self.settings.fuse_mode, head_merge=self.settings.head_merge, weighting=self.settings.weighting
        )
        base = serialize(self._sign(fused_to_package(model, block_packages, self.run_id)))
        mu = self.settings.proximal_mu if self.settings.fuse_aggregation == "fedprox" else 0.0
        rounds, participants = Rounds(self.settings.fuse_rounds, [model.fusion_state_dict()]), []
        done = self.progress.get("fuse")
        if done:
            rounds.history, participants = list(done["history"]), list(done["participants"])
            rounds.states = [self.checkpoint.load_tensors(f"fuse-state-{i}") for i in range(done["states"])]
        elif self.checkpoint is not None:
            self.checkpoint.save_tensors("fuse-state-0", rounds.states[0])
        first_round = rounds.next_round

        def request(round_index: int, final: bool, state: StateDict) -> Payload:
            config = {
                "round": round_index,
                "epochs": 0 if final else self.settings.fuse_local_epochs,
                "task": json.dumps(task.to_dict()),
                "proximal-mu": mu,
                "run-id": self.run_id,
            }
            if round_index == first_round:  # the model travels once, again after a resume (sites may have lost it)
                config["package"] = base
            return Payload(config=config, arrays=dict(state) if round_index > 0 else None)

        def record(finished: Round) -> None:
            participants.append(sorted(self._site(n) for n in finished.answered))
            self._audit(
                "fuse-round",
                round=finished.index,
                participants=participants[-1],
                validation_loss=finished.validation_loss,
                trained=not finished.final,
            )
            if self.checkpoint is not None:
                self.checkpoint.save_tensors(f"fuse-state-{len(rounds.states) - 1}", rounds.states[-1])
                self.progress["fuse"] = {
                    "history": rounds.history,
                    "participants": participants,
                    "states": len(rounds.states),
                }
                self._checkpoint()

        rounds.run(
            paired,
            request,
            functools.partial(self._exchange, "fuse", "train.fuse"),
            record,
            aggregate=self._aggregate_fuse,
            drop_lost=True,  # a site that dropped out is not waited for again
        )
        best = rounds.best()
        model.load_state_dict(rounds.states[best], strict=False)
        self.results["rounds"]["fuse"] = {
            "validation_loss": rounds.history,
            "kept_round": best,
            "participants": participants,
            **model.parameter_counts(),
        }
        package = self._sign(fused_to_package(model, block_packages, self.run_id))
        self._save("fused.pb", serialize(package))
        self._audit("fused", content_hash=package.content_hash.hex(), kept_round=best)
        return package

    # -- differential privacy (fedlego.common.privacy) -------------------------------------
    def _aggregate_fuse(
        self, reference: StateDict, answered: dict[int, Payload], counts: list[float], asked: int
    ) -> StateDict:
        """FedAvg of the fusion parameters, or with ``fuse-dp-noise`` > 0 central DP-FedAvg
        (clipped site updates, Gaussian noise, unweighted mean); records the spent budget."""
        states = [p.arrays for p in answered.values()]
        if self.settings.fuse_dp_noise <= 0:
            return average_states(states, counts)
        settings = self.settings
        record = self.results.setdefault("privacy", {}).setdefault("fuse", {"sample_rates": []})
        accountant = getattr(self, "_fuse_accountant", None)
        if accountant is None:  # replays the rounds recorded before a resume
            accountant = CentralAccountant(settings.fuse_dp_noise, settings.fuse_dp_clip, settings.fuse_dp_delta)
            for rate in record["sample_rates"]:
                accountant.step(rate)
            self._fuse_accountant = accountant
        state, info = dp_average_updates(reference, states, settings.fuse_dp_clip, settings.fuse_dp_noise)
        accountant.step(len(states) / max(asked, 1))
        record["sample_rates"].append(len(states) / max(asked, 1))
        record.setdefault("clipped_updates", []).append(info["clipped"])
        record.update(accountant.summary())
        self.log(f"  fuse DP: epsilon {record['epsilon']:.3f} (delta {record['delta']:g}), {record['rounds']} rounds")
        return state

    def _record_block_privacy(self, block_packages: dict[str, BlockPackage]) -> None:
        """The DP-SGD budget each merged block reports in its manifest (if trained with DP)."""
        for modality, package in block_packages.items():
            if "dp_epsilon" in package.metrics:
                self.results.setdefault("privacy", {}).setdefault("blocks", {})[modality] = {
                    "site": package.site,
                    "epsilon": package.metrics["dp_epsilon"],
                    "delta": package.metrics.get("dp_delta"),
                    "noise_multiplier": package.metrics.get("dp_noise_multiplier"),
                    "clip": package.metrics.get("dp_clip"),
                }

    def _save(self, name: str, data: bytes) -> None:
        if self.out_dir is None:
            return
        path = self.out_dir / "packages" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def _write_results(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "results.json").write_text(json.dumps(self.results, indent=2, default=str))

    def _write_report(self) -> None:
        """``report.html`` rendered from results.json as written; a failure is logged, never raised."""
        if self.out_dir is None:
            return
        try:
            write_report(json.loads((self.out_dir / "results.json").read_text()), self.out_dir)
        except Exception as error:  # the report is a view of results.json, which is already safe on disk
            self.log(f"report not written: {type(error).__name__}: {error}")

    def run(self) -> dict[str, Any]:
        """All phases; on a fatal error the results so far are written with the reason."""
        start = time.perf_counter()
        try:
            self.open_records()
            self.load_keys()
            nodes = self.wait_for_sites()
            task = self.describe(nodes)
            if "merge" in self.completed:
                merged, model = self._reload("merged.pb")
                blocks, block_packages = dict(model.blocks), {p.modality: p for p in merged.blocks}
            else:
                blocks, block_packages, merged = self.merge(self.train_blocks(task), task)
                self._checkpoint("merge")
            if "evaluate-merge" not in self.completed:
                self.evaluate("merge", merged)
                self._checkpoint("evaluate-merge")
            if "fuse" in self.completed:
                fused = self._reload("fused.pb")[0] if (self.out_dir / "packages" / "fused.pb").exists() else None
            else:
                fused = self.fuse(blocks, block_packages, task)
                self._checkpoint("fuse")
            if fused is not None and "evaluate-fuse" not in self.completed:
                self.evaluate("fuse", fused)
                self._checkpoint("evaluate-fuse")
            self.results["status"] = "completed"
            self._audit("run-completed")
        except FederationError as error:
            self.results["status"] = "failed"
            self.results["error"] = str(error)
            self.log(f"federation stopped: {error}")
            self._audit("run-failed", reason=str(error))
        finally:
            self.results["wall_seconds"] = time.perf_counter() - start
            self.results["finished_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            self._write_results()
            self._write_report()
        return self.results
