"""What every phase of a federated run is: a named step the coordinator walks through in order,
owning its requests, its acceptance of the sites' replies, its record in the results and, when it
is checkpointed, a typed state a restarted coordinator resumes from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from fedlego.server.results import plain_values, typed_values

if TYPE_CHECKING:
    from fedlego.server.orchestrator import Federation
    from fedlego.server.recorder import RunRecorder


class Phase(ABC):
    """One step of a run. ``run`` does it; on a resume after it finished, ``restore`` reloads what
    it produced instead. A phase that does not ``apply`` is skipped and not recorded; one that is
    not ``checkpointed`` runs again on every attempt (the sites' connections are new)."""

    name: str
    checkpointed: bool = True

    def applies(self, federation: Federation) -> bool:
        """Whether this run needs the phase (e.g. no fused model: nothing to evaluate)."""
        return True

    @abstractmethod
    def run(self, federation: Federation) -> None:
        """Do the phase, leaving what it produced in ``federation.models``."""

    def restore(self, federation: Federation) -> None:
        """Reload what the phase produced before the coordinator restarted (by default nothing:
        what it recorded in the results came back with the checkpoint)."""
        return None


@dataclass
class PhaseState:
    """The typed checkpoint state of a phase (a dataclass; saved as plain JSON, like RunResults,
    under the phase's name in the checkpoint's progress)."""

    @classmethod
    def load(cls, recorder: RunRecorder, name: str) -> Self:
        """The state saved before a restart, or a fresh one."""
        values = recorder.progress.inside.get(name)
        return typed_values(cls, values) if values else cls()

    def save(self, recorder: RunRecorder, name: str) -> None:
        """Checkpoint the state now."""
        recorder.progress.inside[name] = plain_values(self)
        recorder.save_progress()
