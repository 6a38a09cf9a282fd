"""A fedlego encoder plugin: a transformer over tabular features (FT-Transformer-like).

Each of the ``in_features`` preprocessed values becomes a token (value times a learned per-feature
vector plus a per-feature bias), a few transformer encoder layers mix the tokens, and the encoder
returns all feature tokens ``(b, in_features, width)``: the LegoBlock's latent array attends over
them. Unlike the reference SNN (one embedding per patient), the block sees one token per feature.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["TabularTransformer"]


class TabularTransformer(nn.Module):
    """x (b, in_features) -> tokens (b, in_features, width)."""

    def __init__(self, in_features: int, width: int = 32, depth: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.scale = nn.Parameter(torch.randn(in_features, width) * 0.1)
        self.bias = nn.Parameter(torch.zeros(in_features, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    @classmethod
    def infer_kwargs(cls, example: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, Any]:
        """The site names width/depth/heads/dropout; the input width comes from the data."""
        return {"in_features": int(example["x"].shape[-1]), **kwargs}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.unsqueeze(-1) * self.scale + self.bias
        return self.layers(tokens)
