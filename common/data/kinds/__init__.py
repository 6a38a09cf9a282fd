"""Modality kinds: the :class:`ModalityKind` contract and the registry (built in and plugins)."""

from .base import ArrayKind, LongTableKind, ModalityKind, WideTableKind
from .registry import (
    KIND_PLUGIN_GROUP,
    kind_names,
    known_kind,
    modality_kind,
    register_kind,
    unknown_kind_message,
)

__all__ = [
    "KIND_PLUGIN_GROUP",
    "ArrayKind",
    "LongTableKind",
    "ModalityKind",
    "WideTableKind",
    "kind_names",
    "known_kind",
    "modality_kind",
    "register_kind",
    "unknown_kind_message",
]
