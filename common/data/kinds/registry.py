"""The registry of modality kinds: the four built in, those registered in this process and those
of installed plugins (the ``fedlego.kinds`` entry-point group). Every lookup goes through
:func:`modality_kind`; the built-in modules and the plugins load on first use."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .base import ModalityKind

KIND_PLUGIN_GROUP = "fedlego.kinds"
"""Entry-point group of plugin kinds: each entry names a :class:`ModalityKind` subclass or instance."""
BUILT_IN = ("tabular", "timeseries", "image", "bags")
"""The built-in kinds, in the order the synthetic cohort cycles through them."""
KINDS: dict[str, ModalityKind] = {}
KIND_PLUGIN_ERRORS: dict[str, str] = {}
"""Plugin kind name -> why it failed to load (a broken plugin never stops the kinds that work)."""
_loaded = False


def register_kind(kind: ModalityKind | type[ModalityKind]) -> ModalityKind:
    """Make a kind known in this process (an instance, or a class built without arguments);
    returns the instance. Registering a name twice replaces the earlier kind."""
    instance = kind() if isinstance(kind, type) else kind
    if not isinstance(instance, ModalityKind):
        raise TypeError(f"{kind!r} is not a ModalityKind")
    if not isinstance(getattr(instance, "name", None), str) or not instance.name:
        raise TypeError(f"{type(instance).__name__} has no kind name")
    KINDS[instance.name] = instance
    return instance


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILT_IN:
        importlib.import_module(f"{__package__}.{name}")
    for entry in entry_points(group=KIND_PLUGIN_GROUP):
        distribution = entry.dist.name if entry.dist is not None else "unknown"
        try:
            kind = register_kind(entry.load())
            if kind.name != entry.name:
                raise ValueError(f"the entry point is named {entry.name!r} but the kind {kind.name!r}")
        except Exception as error:  # a broken plugin must not stop the kinds that work
            KINDS.pop(entry.name, None)
            KIND_PLUGIN_ERRORS[entry.name] = f"plugin {distribution}: {type(error).__name__}: {error}"


def kind_names() -> tuple[str, ...]:
    """Every kind known here: the built-in ones first."""
    _load()
    return (*[k for k in BUILT_IN if k in KINDS], *sorted(set(KINDS) - set(BUILT_IN)))


def known_kind(name: object) -> bool:
    """Whether ``name`` is a kind known here."""
    _load()
    return isinstance(name, str) and name in KINDS


def unknown_kind_message(name: object) -> str:
    """Why ``name`` is not a kind here (a plugin that failed to load says why)."""
    _load()
    if isinstance(name, str) and name in KIND_PLUGIN_ERRORS:
        return f"modality kind {name!r} failed to load: {KIND_PLUGIN_ERRORS[name]}"
    return f"unknown modality kind {name!r} (valid: {list(kind_names())})"


def modality_kind(name: object) -> ModalityKind:
    """The kind called ``name``; ``ValueError`` naming the known kinds otherwise."""
    if not known_kind(name):
        raise ValueError(unknown_kind_message(name))
    return KINDS[name]  # type: ignore[index]
