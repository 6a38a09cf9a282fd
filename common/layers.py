"""Perceiver-style building blocks: pre-norm cross-attention and feed-forward, one idea per class."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head attention of latent queries (b, c, d) over tokens (b, n, width).

    ``mask`` (b, n) marks valid tokens with True. A sample whose tokens are all masked receives a
    zero update instead of NaN (the residual then leaves its latent unchanged).
    """

    def __init__(self, latent_dim: int, token_width: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.latent_norm = nn.LayerNorm(latent_dim)
        self.token_norm = nn.LayerNorm(token_width)
        self.to_q = nn.Linear(latent_dim, inner, bias=False)
        self.to_kv = nn.Linear(token_width, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, latent_dim)

    def forward(self, latent: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, c, _ = latent.shape
        n = tokens.shape[1]
        q = self.to_q(self.latent_norm(latent)).view(b, c, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(self.token_norm(tokens)).chunk(2, dim=-1)
        k = k.reshape(b, n, self.heads, -1).transpose(1, 2)
        v = v.reshape(b, n, self.heads, -1).transpose(1, 2)
        attn_mask = None
        empty = None
        if mask is not None:
            valid = mask.bool()
            empty = ~valid.any(dim=1)
            # Let fully masked samples attend everywhere, then zero their update below.
            valid = valid | empty[:, None]
            attn_mask = valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.to_out(out.transpose(1, 2).reshape(b, c, -1))
        if empty is not None:
            out = out.masked_fill(empty[:, None, None], 0.0)
        return out


class FeedForward(nn.Module):
    """Pre-norm two-layer GELU MLP on the last dimension."""

    def __init__(self, dim: int, multiplier: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * multiplier),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim * multiplier, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LatentUpdate(nn.Module):
    """One update step of a latent array: residual cross-attention then residual feed-forward."""

    def __init__(self, latent_dim: int, token_width: int, heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attend = CrossAttention(latent_dim, token_width, heads, head_dim)
        self.feed_forward = FeedForward(latent_dim, dropout=dropout)

    def forward(self, latent: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        latent = latent + self.attend(latent, tokens, mask)
        return latent + self.feed_forward(latent)


class TaskHead(nn.Module):
    """Reads a latent (b, c, d): real part, mean over channels, LayerNorm, Linear to outputs."""

    def __init__(self, latent_dim: int, n_outputs: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(latent_dim)
        self.linear = nn.Linear(latent_dim, n_outputs)

    def zero_output(self) -> None:
        """Make the head output 0 for every latent (its Linear set to zero)."""
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.is_complex():
            latent = latent.real
        return self.linear(self.norm(latent.mean(dim=1)))
