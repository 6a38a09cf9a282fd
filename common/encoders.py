"""Reference encoders, one per kind of modality. Any ``nn.Module`` can be wrapped instead.

Each takes the tensors produced by the matching preprocessor as keyword arguments and returns
an embedding (b, w) or tokens (b, n, w) with an optional token mask (b, n).
"""

from __future__ import annotations

import math

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
from this registry, so unknown names are refused instead of imported."""


def register_encoder(name: str, factory: type[nn.Module]) -> None:
    """Make a user encoder class rebuildable from packages (every site must register it)."""
    ENCODER_FACTORIES[name] = factory


def reference_encoder_spec(kind: str, tensors: dict[str, torch.Tensor], width: int = 64, dropout: float = 0.1) -> dict:
    """Spec of the reference encoder for ``kind``, sized from an example batch of its tensors.

    A spec is ``{"name", "kwargs", "example"}``: the factory name, its keyword arguments and the
    per-patient shape of every input tensor (for rebuilding the block elsewhere)."""
    example = {key: list(value.shape[1:]) for key, value in tensors.items()}
    if kind == "tabular":
        name, kwargs = "snn", {"in_features": tensors["x"].shape[-1], "width": width, "dropout": dropout}
    elif kind == "bags":
        name, kwargs = (
            "gated-attention-mil",
            {"in_features": tensors["x"].shape[-1], "width": width, "dropout": dropout},
        )
    elif kind == "timeseries":
        n_variables = tensors["values"].shape[-1]
        name, kwargs = "irregular-time-series", {"n_variables": n_variables, "width": width, "dropout": dropout}
    elif kind == "image":
        name, kwargs = "small-cnn", {"in_channels": tensors["x"].shape[1], "width": min(width, 32)}
    else:
        raise ValueError(f"no reference encoder for modality kind {kind!r}")
    return {
        "name": name,
        "kwargs": {k: int(v) if isinstance(v, int) else v for k, v in kwargs.items()},
        "example": example,
    }


def build_encoder(spec: dict) -> nn.Module:
    """The encoder a spec describes, from the registry only."""
    name = spec.get("name")
    if name not in ENCODER_FACTORIES:
        raise ValueError(f"unknown encoder {name!r}; registered: {sorted(ENCODER_FACTORIES)}")
    return ENCODER_FACTORIES[name](**spec.get("kwargs", {}))


def example_input(spec: dict) -> dict[str, torch.Tensor]:
    """A batch of two all-zero inputs shaped as in the spec (enough to infer widths)."""
    return {key: torch.zeros(2, *shape) for key, shape in spec["example"].items()}


def reference_encoder(kind: str, tensors: dict[str, torch.Tensor], width: int = 64, dropout: float = 0.1) -> nn.Module:
    """The reference encoder for a modality kind, sized from an example batch of its tensors."""
    return build_encoder(reference_encoder_spec(kind, tensors, width, dropout))
