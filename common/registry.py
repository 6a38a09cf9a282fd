"""Named implementations of one choice (a merge method, a round aggregation, a weighting, a fusion
topology), and the torch-free list of their names.

A registry owns its names: an implementation is one decorated function,
``@LATENT_MERGES.register("harmonic")``. The run configuration, the CLI's choices and the Flower
app's config table read the names through :func:`registered_names`, which finds the decorators in
the module's source without importing it (those modules import torch; the CLI must not on every
command). ``tests/test_registry.py`` checks that both views agree.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> implementation of one configuration choice (``option``, e.g. ``latent-merge``)."""

    def __init__(self, option: str) -> None:
        self.option = option
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding an implementation under ``name`` (a name registers once)."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.option} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise ValueError(f"unknown {self.option.replace('-', ' ')} {name!r}; choose {', '.join(self._items)}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def values(self) -> list[T]:
        """The implementations, in registration order."""
        return list(self._items.values())

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._items)


@functools.cache
def registered_names(module: str, registry: str) -> tuple[str, ...]:
    """Names registered with ``@<registry>.register("name")`` in ``common/<module>.py``, in source
    order, read from the source (nothing is imported)."""
    tree = ast.parse((Path(__file__).parent / f"{module}.py").read_text())
    names = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.ClassDef):
            continue
        for decorator in node.decorator_list:
            if (
                isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Attribute)
                and decorator.func.attr == "register"
                and isinstance(decorator.func.value, ast.Name)
                and decorator.func.value.id == registry
                and len(decorator.args) == 1
                and isinstance(decorator.args[0], ast.Constant)
            ):
                names.append((node.lineno, decorator.args[0].value))
    if not names:
        raise ValueError(f"no @{registry}.register(...) in common/{module}.py")
    return tuple(name for _, name in sorted(names))
