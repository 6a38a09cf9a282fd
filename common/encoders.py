"""Reference encoders, one per kind of modality. Any ``nn.Module`` can be wrapped instead.

Each takes the tensors produced by the matching preprocessor as keyword arguments and returns
an embedding (b, w) or tokens (b, n, w) with an optional token mask (b, n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import torch
from torch import nn


class SNN(nn.Module):
    """Self-normalising network for tabular and omics features (Klambauer et al., 2017).

    x (b, f) -> (b, width): Linear + SELU + AlphaDropout layers with LeCun-normal init.
    """

    def __init__(self, in_features: int, width: int = 64, depth: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.SELU(), nn.AlphaDropout(dropout)]
        self.net = nn.Sequential(*layers)
        for module in self.net:
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GatedAttentionMIL(nn.Module):
    """Gated attention multiple-instance pooling (Ilse et al., 2018) for bags of patch features.

    x (b, n, f) with mask (b, n) -> bag embedding (b, width). The attention softmax runs over the
    instances of each bag (masked instances get zero weight), never across the batch.
    """

    def __init__(self, in_features: int, width: int = 64, attention_dim: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(width, attention_dim)
        self.attention_u = nn.Linear(width, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights (b, n) over the instances of each bag."""
        h = self.embed(x)
        scores = self.attention_w(torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))).squeeze(-1)
        if mask is not None:
            valid = mask.bool()
            scores = scores.masked_fill(~valid, float("-inf"))
            weights = torch.softmax(scores, dim=1)
            return torch.nan_to_num(weights, nan=0.0)  # an empty bag attends to nothing
        return torch.softmax(scores, dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        weights = self.attention(x, mask)
        return torch.einsum("bn,bnw->bw", weights, self.embed(x))


class TimeEncoding(nn.Module):
    """Sinusoidal features of a continuous time (b, t) -> (b, t, dim)."""

    def __init__(self, dim: int, max_period: float = 100.0) -> None:
        super().__init__()
        frequencies = torch.exp(-math.log(max_period) * torch.arange(dim // 2) / max(dim // 2, 1))
        self.register_buffer("frequencies", frequencies)

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        angles = times.unsqueeze(-1) * self.frequencies
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class IrregularTimeSeriesEncoder(nn.Module):
    """Irregularly sampled multivariate series: one token per visit.

    values/observed (b, t, v), times (b, t), mask (b, t) -> tokens (b, t, width) and the visit
    mask. Each visit token sees the observed values, which variables were observed, a sinusoidal
    encoding of its time and the log gap since the previous visit, so irregular sampling and
    missing values are explicit rather than imputed.
    """

    def __init__(self, n_variables: int, width: int = 64, time_dim: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.time_encoding = TimeEncoding(time_dim)
        self.embed = nn.Sequential(
            nn.Linear(2 * n_variables + time_dim + 1, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
        )

    def forward(
        self, values: torch.Tensor, observed: torch.Tensor, times: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        previous = torch.cat([times[:, :1], times[:, :-1]], dim=1)
        gaps = torch.log1p((times - previous).clamp_min(0.0)).unsqueeze(-1)
        features = torch.cat([values * observed, observed, self.time_encoding(times), gaps], dim=-1)
        tokens = self.embed(features) * mask.unsqueeze(-1)
        return tokens, mask.bool()


class SmallCNN(nn.Module):
    """A small convolutional encoder for 2D images: x (b, c, h, w) -> tokens (b, h'w', width)."""

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width // 2, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width // 2, width, 3, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(2).transpose(1, 2)


ENCODER_FACTORIES: dict[str, type[nn.Module]] = {
    "snn": SNN,
    "gated-attention-mil": GatedAttentionMIL,
    "irregular-time-series": IrregularTimeSeriesEncoder,
    "small-cnn": SmallCNN,
}
"""Encoders a package may name. Packages never carry code: a receiver rebuilds an encoder only
from this registry (built in, ``register_encoder`` or a plugin), so unknown names are refused."""

PLUGIN_GROUP = "fedlego.encoders"
"""The entry-point group through which installed distributions add encoders: ``name = "module:Class"``."""


@dataclass(frozen=True)
class Plugin:
    """Where a plugin encoder comes from: its distribution and version."""

    distribution: str
    version: str


PLUGINS: dict[str, Plugin] = {}
"""Encoders that came from plugins, by name."""
PLUGIN_ERRORS: dict[str, str] = {}
"""Plugin entry points that failed to load, by name, with the reason."""
_plugins_loaded = False


def load_plugins() -> None:
    """Register every encoder of the ``fedlego.encoders`` entry-point group (once per process).
    A plugin that fails to import is recorded in ``PLUGIN_ERRORS``, not raised: only blocks that
    use it are refused."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group=PLUGIN_GROUP):
        distribution = entry.dist.name if entry.dist is not None else "unknown"
        version = entry.dist.version if entry.dist is not None else "0"
        try:
            factory = entry.load()
            if not (isinstance(factory, type) and issubclass(factory, nn.Module)):
                raise TypeError(f"{entry.value} is not an nn.Module class")
        except Exception as error:  # a broken plugin must not stop the encoders that work
            PLUGIN_ERRORS[entry.name] = f"plugin {distribution} {version}: {type(error).__name__}: {error}"
            continue
        ENCODER_FACTORIES[entry.name] = factory
        PLUGINS[entry.name] = Plugin(distribution, version)


def register_encoder(name: str, factory: type[nn.Module]) -> None:
    """Make a user encoder class rebuildable from packages in this process (every party that
    runs the block must register it; a plugin distribution does that for every process)."""
    ENCODER_FACTORIES[name] = factory


def known_encoder(name: str) -> bool:
    """Whether ``name`` can be built here (built in, registered or from a plugin)."""
    load_plugins()
    return name in ENCODER_FACTORIES


def _example_entry(value: torch.Tensor) -> list[int] | dict[str, Any]:
    shape = [int(s) for s in value.shape[1:]]
    return shape if value.dtype == torch.float32 else {"shape": shape, "dtype": str(value.dtype).removeprefix("torch.")}


def encoder_spec(name: str, kwargs: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict:
    """The spec of encoder ``name`` for inputs like ``tensors``: its kwargs (completed by the
    class's ``infer_kwargs(example, **kwargs)`` when it has one, e.g. the input width), the
    per-patient shape and dtype of every input, and for a plugin its distribution and version."""
    load_plugins()
    if name not in ENCODER_FACTORIES:
        raise ValueError(unknown_encoder_message(name))
    factory = ENCODER_FACTORIES[name]
    if hasattr(factory, "infer_kwargs"):
        kwargs = factory.infer_kwargs(tensors, **kwargs)
    spec: dict[str, Any] = {
        "name": name,
        "kwargs": dict(kwargs),
        "example": {key: _example_entry(value) for key, value in tensors.items()},
    }
    if name in PLUGINS:
        spec["plugin"] = {"distribution": PLUGINS[name].distribution, "version": PLUGINS[name].version}
    return spec


def unknown_encoder_message(name: str, plugin: dict | None = None) -> str:
    """Why ``name`` cannot be built here."""
    if name in PLUGIN_ERRORS:
        return f"encoder {name!r} failed to load: {PLUGIN_ERRORS[name]}"
    if plugin:
        return (
            f"encoder {name!r} comes from plugin {plugin.get('distribution')!r} {plugin.get('version')}, "
            "which is not installed here"
        )
    return f"unknown encoder {name!r}; registered: {sorted(ENCODER_FACTORIES)}"


def reference_encoder_spec(kind: str, tensors: dict[str, torch.Tensor], width: int = 64, dropout: float = 0.1) -> dict:
    """Spec of the reference encoder for ``kind``, sized from an example batch of its tensors.

    A spec is ``{"name", "kwargs", "example"}``: the factory name, its keyword arguments and the
    per-patient shape of every input tensor (for rebuilding the block elsewhere)."""
    from fedlego.common.data.kinds import modality_kind  # the data layer is not needed to build encoders

    name, kwargs = modality_kind(kind).reference_encoder(tensors, width, dropout)
    return {
        "name": name,
        "kwargs": {k: int(v) if isinstance(v, int) else v for k, v in kwargs.items()},
        "example": {key: _example_entry(value) for key, value in tensors.items()},
    }


DEFAULT_MAX_ENCODER_PARAMETERS = 50_000_000
"""The largest encoder a party builds (parameters) unless the run sets ``max-encoder-parameters``."""


def encoder_parameter_count(factory: type[nn.Module], kwargs: dict[str, Any]) -> int:
    """Parameters of ``factory(**kwargs)``, counted on the meta device (nothing is allocated)."""
    try:
        with torch.device("meta"):
            probe = factory(**kwargs)
    except Exception as error:  # bad kwargs or an encoder that cannot be sized without allocating
        raise ValueError(f"cannot build {factory.__name__}({kwargs}) on the meta device: {error}") from error
    return sum(p.numel() for p in probe.parameters())


def build_encoder(spec: dict, max_parameters: int = DEFAULT_MAX_ENCODER_PARAMETERS) -> nn.Module:
    """The encoder a spec describes, from the registry only. A plugin encoder needs the same
    plugin installed with the same major version. An encoder over ``max_parameters`` is refused
    before any weight is allocated."""
    load_plugins()
    name = spec.get("name")
    plugin = spec.get("plugin")
    if name not in ENCODER_FACTORIES:
        raise ValueError(unknown_encoder_message(str(name), plugin))
    if plugin:
        installed = PLUGINS.get(name)
        if installed is None or installed.distribution != plugin.get("distribution"):
            raise ValueError(
                f"encoder {name!r} comes from plugin {plugin.get('distribution')!r}, "
                f"here it is {'built in' if installed is None else repr(installed.distribution)}"
            )
        if _major(installed.version) != _major(str(plugin.get("version"))):
            raise ValueError(
                f"encoder {name!r}: plugin {installed.distribution!r} {plugin.get('version')} made the package, "
                f"{installed.version} is installed here (major versions differ)"
            )
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ValueError(f"encoder {name!r}: kwargs must be an object")
    count = encoder_parameter_count(ENCODER_FACTORIES[name], kwargs)
    if count > max_parameters:
        raise ValueError(
            f"encoder {name!r} has {count:,} parameters, over the budget of {max_parameters:,} "
            "(run-config key max-encoder-parameters)"
        )
    return ENCODER_FACTORIES[name](**kwargs)


def _major(version: str) -> str:
    return version.split(".", 1)[0]


EXAMPLE_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                  "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}  # fmt: skip
"""The input dtypes a spec may name (a plain shape list means float32)."""


MAX_EXAMPLE_ELEMENTS = 50_000_000
"""The most values one example input of an encoder spec may hold (a bound checked before allocating)."""


def example_input(spec: dict) -> dict[str, torch.Tensor]:
    """A batch of two all-zero inputs with the spec's shapes and dtypes (enough to infer widths);
    shapes must be lists of positive integers holding at most ``MAX_EXAMPLE_ELEMENTS`` values."""
    batch = {}
    for key, entry in spec["example"].items():
        if not isinstance(entry, list | dict):
            raise ValueError(f"example input {key!r}: shape must be a list of positive integers, got {entry!r}")
        shape, dtype = (entry, "float32") if isinstance(entry, list) else (entry.get("shape"), entry.get("dtype"))
        if dtype not in EXAMPLE_DTYPES:
            raise ValueError(f"example input {key!r}: dtype {dtype!r} not one of {sorted(EXAMPLE_DTYPES)}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
        ):
            raise ValueError(f"example input {key!r}: shape must be a list of positive integers, got {shape!r}")
        if math.prod(shape) > MAX_EXAMPLE_ELEMENTS:
            raise ValueError(f"example input {key!r}: shape {shape} exceeds {MAX_EXAMPLE_ELEMENTS:,} values")
        batch[key] = torch.zeros(2, *shape, dtype=EXAMPLE_DTYPES[dtype])
    return batch


def reference_encoder(kind: str, tensors: dict[str, torch.Tensor], width: int = 64, dropout: float = 0.1) -> nn.Module:
    """The reference encoder for a modality kind, sized from an example batch of its tensors."""
    return build_encoder(reference_encoder_spec(kind, tensors, width, dropout))
