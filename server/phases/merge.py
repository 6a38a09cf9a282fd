"""Merge: LegoMerge of the chosen block of every modality (no data, no training), signed and
saved with the blocks it was made of."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fedlego.common.lego import LegoMerge
from fedlego.common.packaging import merged_to_package, model_from_package, serialize
from fedlego.proto.fedlego_pb2 import BlockPackage
from fedlego.server.phases.base import Phase
from fedlego.server.results import BlockPrivacy

if TYPE_CHECKING:
    from fedlego.server.orchestrator import Federation

MERGED = "merged.pb"


class MergePhase(Phase):
    """Its time (``phases["merge"]``) counts the package checks and the merge, not the FedAvg rounds."""

    name = "merge"

    def run(self, federation: Federation) -> None:
        start = time.perf_counter()
        models, results, settings = federation.models, federation.results, federation.settings
        self._record_block_privacy(federation, models.block_packages)
        merge = settings.merge
        merged = LegoMerge(models.blocks, merge.latent_merge, merge.head_merge, merge.weighting)
        package = federation.sign(merged_to_package(merged, models.block_packages, federation.run_id))
        federation.log(f"phase merge: LegoMerge of {', '.join(sorted(models.blocks))}")
        results.phase("merge").begin()
        results.phase("merge").seconds += time.perf_counter() - start
        results.phase("merge").end()
        results.merged_modalities = sorted(models.blocks)
        federation.recorder.audit(
            "merged",
            modalities=sorted(models.blocks),
            weights=merged.weights,
            content_hash=package.content_hash.hex(),
            blocks={m: p.content_hash.hex() for m, p in models.block_packages.items()},
        )
        federation.recorder.save_package(MERGED, serialize(package))
        models.merged = package

    def restore(self, federation: Federation) -> None:
        merged = federation.reload_model(MERGED)
        federation.models.merged = merged
        federation.models.blocks = dict(model_from_package(merged).blocks)
        federation.models.block_packages = {p.modality: p for p in merged.blocks}

    @staticmethod
    def _record_block_privacy(federation: Federation, block_packages: dict[str, BlockPackage]) -> None:
        """The DP-SGD budget each merged block reports in its manifest (if trained with DP)."""
        for modality, package in block_packages.items():
            if "dp_epsilon" in package.metrics:
                privacy = federation.results.privacy_record()
                privacy.blocks = privacy.blocks or {}
                privacy.blocks[modality] = BlockPrivacy(
                    site=package.site,
                    epsilon=package.metrics["dp_epsilon"],
                    delta=package.metrics.get("dp_delta"),
                    noise_multiplier=package.metrics.get("dp_noise_multiplier"),
                    clip=package.metrics.get("dp_clip"),
                )
