"""What a finished run lacks: a registered site that took no part, a modality a site declared that
no block brought into the merge, a site with paired data that is missing from the fuse rounds,
rounds cut short because the sites that held them vanished.
A run with such gaps is recorded as ``incomplete`` unless the run config allows it
(``allow-partial``): a consortium must not mistake it for the model of every hospital."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedlego.common.signing import COORDINATOR
from fedlego.server.phases.fuse import trainable_modalities

if TYPE_CHECKING:
    from fedlego.server.orchestrator import Federation


def registered_sites(federation: Federation) -> list[str]:
    """The consortium's sites: every signer of trusted-sites but the coordinator (none without it)."""
    return sorted(name for name in federation.trusted or {} if name != COORDINATOR)


def run_gaps(federation: Federation) -> list[str]:
    """Each gap of the finished run, in words naming the site or modality."""
    described = {d.site: d for d in federation.sites.values()}
    gaps = [f"registered site {name} took no part" for name in registered_sites(federation) if name not in described]
    declared = sorted({m for d in described.values() for m in d.modalities})
    merged = set(federation.models.blocks)
    gaps += [f"modality {m}: no block of it entered the merge" for m in declared if m not in merged]
    if federation.settings.rounds.fuse_rounds > 0:
        paired = sorted(name for name, d in described.items() if len(merged & trainable_modalities(d)) >= 2)
        fuse = federation.results.rounds.get("fuse")
        if paired and fuse is None:
            gaps.append(f"no fuse rounds ran, though {', '.join(paired)} hold paired data")
        elif fuse is not None and fuse.participants:
            last = set(fuse.participants[-1])
            gaps += [f"paired site {name} is missing from the last fuse round" for name in paired if name not in last]
    rounds = federation.results.rounds.items()
    gaps += [f"{name} rounds cut short, {record.cut_short}" for name, record in rounds if record.cut_short]
    return gaps
