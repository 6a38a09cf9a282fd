"""The phases of a federated run, one module each, in the order ``Federation.run`` walks them."""

from fedlego.server.phases.base import Phase, PhaseState
from fedlego.server.phases.block_fedavg import BlockFedAvgPhase
from fedlego.server.phases.blocks import BlocksPhase
from fedlego.server.phases.describe import DescribePhase
from fedlego.server.phases.evaluate import EvaluatePhase
from fedlego.server.phases.fuse import FusePhase
from fedlego.server.phases.merge import MergePhase


def run_phases() -> list[Phase]:
    """A run's phases, in order (a fresh list per run: phases may hold per-run state)."""
    return [
        DescribePhase(),
        BlocksPhase(),
        BlockFedAvgPhase(),
        MergePhase(),
        EvaluatePhase("merge"),
        FusePhase(),
        EvaluatePhase("fuse"),
    ]


__all__ = [
    "BlockFedAvgPhase",
    "BlocksPhase",
    "DescribePhase",
    "EvaluatePhase",
    "FusePhase",
    "MergePhase",
    "Phase",
    "PhaseState",
    "run_phases",
]
