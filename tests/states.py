"""Fitted preprocessing states of each kind, as real preprocessors write them and consistent with
an example input (for packages built in tests without fitting on data)."""

from __future__ import annotations

from typing import Any

import torch


def fitted(kind: str, example: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A state of ``kind`` whose preprocessor produces inputs shaped like ``example``."""
    if kind == "tabular":
        width = example["x"].shape[-1]
        names = [f"f{i}" for i in range(width - 2)]
        numeric = {"names": names, "log": [False] * len(names), "median": [0.0] * len(names)}
        numeric |= {"mean": [0.5] * len(names), "std": [1.0] * len(names)}
        fit = {"numeric": numeric, "categorical": [{"name": "stage", "categories": ["I", "II"]}]}
    elif kind == "timeseries":
        variables = [f"v{i}" for i in range(example["values"].shape[-1])]
        fit = {"variables": variables, "log": [], "mean": [0.5] * len(variables), "std": [1.0] * len(variables)}
    elif kind == "bags":
        width = example["x"].shape[-1]
        fit = {"mean": [0.0] * width, "std": [1.0] * width}
    else:
        shape = list(example["x"].shape[1:])
        fit = {"shape": shape, "mean": [0.5] * shape[0], "std": [0.2] * shape[0]}
    return {"kind": kind, "options": {}, "fit": fit}
