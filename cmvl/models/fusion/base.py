"""The fusion interface: (vision Tokens, text Tokens), both already at `model.dim`, → `FusionOutput`."""

from __future__ import annotations

import torch
from torch import nn

from cmvl.models.attention import MultiHeadAttention
from cmvl.models.tokens import FusionOutput, Tokens


class Fusion(nn.Module):
    """Base class. Set `record_attention = True` to keep the last forward's attention weights."""

    def __init__(self) -> None:
        super().__init__()
        self.record_attention = False
        self._attention: dict[str, torch.Tensor] = {}

    def attention_maps(self) -> dict[str, torch.Tensor]:
        """Attention weights of the last forward (name → B×heads×Nq×Nk), empty if not recorded or not attentive.

        They are the weights the output was computed from, on its autograd path when gradients are on (Grad-CAM:
        `torch.autograd.grad(score, maps[name])`)."""
        return dict(self._attention)

    def _keep_attention(self, name: str, weights: torch.Tensor | None) -> None:
        if weights is not None:
            self._attention[name] = weights

    def forward(self, vision: Tokens, text: Tokens) -> FusionOutput:  # pragma: no cover - interface
        raise NotImplementedError


def mlp(dim_in: int, dim_hidden: int, dim_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim_hidden, dim_out))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + feed-forward block over B×N×D tokens with a padding mask (True = real token).

    Returns the updated tokens and, if asked, the per-head attention weights (B×heads×N×N).
    """

    def __init__(self, dim: int, heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm_attn, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dropout, heads_key="fusion.heads")
        self.ff = mlp(dim, ff_mult * dim, dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, feats: torch.Tensor, mask: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.norm_attn(feats)
        attended, weights = self.attn(h, h, h, key_padding_mask=~mask, need_weights=need_weights)
        feats = feats + self.drop(attended)
        return feats + self.drop(self.ff(self.norm_ff(feats))), weights
