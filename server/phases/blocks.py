"""Blocks: every site trains a block per modality it holds and uploads the packages; the
coordinator keeps each upload, refuses those it cannot parse or the site never declared, then
checks every package (signature, run, contract, task, sizes, weights) and groups the valid ones by
modality, largest cohort first."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedlego.common.data.presets import preprocessing_for
from fedlego.common.packaging import PackageError, parse_block_package
from fedlego.common.protocol import BlockReply, BlockRequest
from fedlego.proto.fedlego_pb2 import BlockPackage
from fedlego.server.checks import PackageSelection, check_packages, undeclared
from fedlego.server.exchange import FederationError
from fedlego.server.phases.base import Phase, PhaseState
from fedlego.server.results import Failure, Refusal

if TYPE_CHECKING:
    from fedlego.server.orchestrator import Federation


@dataclass
class BlockUploads(PhaseState):
    """The sites that answered and the (site, modality) uploads accepted so far: checkpointed as
    each reply arrives, so a restarted coordinator asks only the sites that had not answered."""

    answered: list[str] = field(default_factory=list)
    accepted: list[list[str]] = field(default_factory=list)
    pooled: dict[str, dict[str, Any]] | None = None
    """The pooled preprocessing the first attempt sent (a resumed run sends the same again)."""


def upload_name(site: str, modality: str) -> str:
    """Where a site's upload is kept in the run folder's packages."""
    return f"uploads/{site}-{modality}.pb"


class BlocksPhase(Phase):
    """Checkpointed per site; the package checks are timed as the merge phase's (as before)."""

    name = "block"

    def run(self, federation: Federation) -> None:
        federation.log("phase block")
        settings, task = federation.settings, federation.models.task
        state = BlockUploads.load(federation.recorder, self.name)
        if state.pooled is None:  # fixed once: a resumed run sends what the first attempt sent
            state.pooled = federation.models.pooled_preprocessing
            for modality in sorted(state.pooled):
                sites = federation.models.pooled_sites.get(modality, [])
                federation.recorder.audit("preprocessing-pooled", modality=modality, sites=sites)
            state.save(federation.recorder, self.name)
        request = BlockRequest(
            federation.run_id,
            task,
            settings.model,
            settings.training,
            preprocessing_for(settings),
            settings.block_privacy(),
            state.pooled,
        )
        packages = [self._reload(federation, site, modality) for site, modality in state.accepted]
        nodes = [n for n, d in federation.sites.items() if d.modalities and d.site not in state.answered]
        if state.answered:
            asked = ", ".join(federation.exchange.site(n) for n in nodes) or "no other site"
            federation.log(
                f"  block: uploads of {', '.join(state.answered)} kept from before the restart; asking {asked}"
            )

        def received(node: int, reply: BlockReply) -> None:
            site = federation.exchange.site(node)
            for modality, package in self._accept(federation, node, reply):
                packages.append(package)
                state.accepted.append([site, modality])
            state.answered.append(site)
            state.save(federation.recorder, self.name)

        minimum = max(federation.exchange.min_responses - len(state.answered), 0)
        federation.exchange("block", dict.fromkeys(nodes, request), minimum=minimum, on_answer=received)
        federation.models.candidates = self._checked(federation, packages, record=True).candidates

    def restore(self, federation: Federation) -> None:
        state = BlockUploads.load(federation.recorder, self.name)
        packages = [self._reload(federation, site, modality) for site, modality in state.accepted]
        federation.models.candidates = self._checked(federation, packages, record=False).candidates

    @staticmethod
    def _accept(federation: Federation, node: int, reply: BlockReply) -> list[tuple[str, BlockPackage]]:
        """One site's reply: failures recorded, uploads saved and audited, packages that do not
        parse or that the site never declared refused; the rest returned by modality."""
        site, results, recorder = federation.exchange.site(node), federation.results, federation.recorder
        for modality, reason in reply.errors.items():
            results.failures.append(Failure(site, f"block:{modality}", reason))
            recorder.audit("block-failed", site=site, modality=modality, reason=reason.splitlines()[0])
            federation.log(f"  block: {site}/{modality} failed: {reason.splitlines()[0]}")
        accepted = []
        for modality, data in reply.packages.items():
            recorder.save_package(upload_name(site, modality), data)
            digest = hashlib.sha256(data).hexdigest()
            recorder.audit("package-received", site=site, modality=modality, sha256=digest, bytes=len(data))
            try:
                package = parse_block_package(data, f"upload from {site}")
            except PackageError as error:
                results.refused.append(Refusal(site, modality, str(error)))
                continue
            problem = undeclared(federation.sites[node], modality, package)
            if problem is not None:
                results.refused.append(Refusal(site, modality, problem))
                recorder.audit("package-refused", site=site, modality=modality, reason=problem)
                federation.log(f"  refused {site}/{modality}: {problem}")
                continue
            accepted.append((modality, package))
        return accepted

    @staticmethod
    def _reload(federation: Federation, site: str, modality: str) -> BlockPackage:
        """An upload accepted before a restart, read back from the run folder."""
        data = federation.recorder.package(upload_name(site, modality))
        if data is None:
            raise FederationError(f"the checkpoint says {site} uploaded {modality}, but its upload file is missing")
        try:
            return parse_block_package(data, f"upload from {site} (kept from before the restart)")
        except PackageError as error:
            raise FederationError(str(error)) from error

    @staticmethod
    def _checked(federation: Federation, packages: list[BlockPackage], record: bool) -> PackageSelection:
        """Every package checked; with ``record`` the refusals and verifications go on record (a
        restore repeats the checks only to rebuild the blocks: they are on record already)."""
        settings, task, results = federation.settings, federation.models.task, federation.results
        if record:
            federation.log(f"phase merge: checking {len(packages)} block packages")
            start = time.perf_counter()
            results.phase("merge").begin()
        selection = check_packages(
            packages,
            settings.model.contract(task),
            task,
            int(settings.coordinator.max_package_mb * 1024 * 1024),
            federation.run_id,
            federation.trusted,
            settings.model.max_encoder_parameters,
            settings.coordinator.max_weight_ratio,
        )
        if record:
            for refusal in selection.refused:
                federation.log(f"  refused {refusal.site}/{refusal.modality}: {refusal.reason}")
                federation.recorder.audit(
                    "package-refused", site=refusal.site, modality=refusal.modality, reason=refusal.reason
                )
            for modality, candidates in selection.candidates.items():
                for package, _ in candidates:
                    federation.recorder.audit(
                        "package-verified",
                        site=package.site,
                        modality=modality,
                        content_hash=package.content_hash.hex(),
                        signed=package.HasField("signature"),
                    )
            results.refused += selection.refused
            results.phase("merge").seconds += time.perf_counter() - start
        if not selection.candidates:
            raise FederationError(
                "no valid block package to merge: "
                + "; ".join(f"{r.site}/{r.modality}: {r.reason}" for r in selection.refused)
            )
        return selection
