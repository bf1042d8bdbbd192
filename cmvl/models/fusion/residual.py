"""Gated residual fusion: every text token adds a gated share of the image evidence it attends to."""

from __future__ import annotations

import torch
from torch import nn

from cmvl.models.attention import MultiHeadAttention
from cmvl.models.fusion.base import Fusion, mlp
from cmvl.models.tokens import FusionOutput, Tokens


class _GatedResidualBlock(nn.Module):
    """text ← LayerNorm(text + g ⊙ attended), g = σ(W [text; attended]); then a residual feed-forward.

    The gate is per token and per channel, so a word decides how much of what it found in the image to take in
    (function words learn to keep their own meaning, content words take the visual evidence).
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_query = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dropout, heads_key="fusion.heads")
        self.gate = nn.Linear(2 * dim, dim)
        self.norm_fused, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = mlp(dim, 4 * dim, dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, text: Tokens, vision: Tokens, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(
            self.norm_query(text.feats),
            vision.feats,
            vision.feats,
            key_padding_mask=~vision.mask,
            need_weights=need_weights,
        )
        gate = torch.sigmoid(self.gate(torch.cat([text.feats, attended], dim=-1)))
        feats = self.norm_fused(text.feats + self.drop(gate * attended))
        return feats + self.drop(self.ff(self.norm_ff(feats))), weights


class GatedResidualFusion(Fusion):
    """`layers` gated residual blocks; pooled = masked mean of the fused text tokens."""

    def __init__(self, *, dim: int, layers: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_GatedResidualBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, vision: Tokens, text: Tokens) -> FusionOutput:
        self._attention = {}
        for i, block in enumerate(self.blocks):
            feats, weights = block(text, vision, self.record_attention)
            text = text.with_feats(feats)
            self._keep_attention(f"layer{i}.text_to_vision", weights)
        text = text.with_feats(self.norm(text.feats))
        tokens = Tokens.concat(text, vision)
        return FusionOutput(tokens, text.pooled_mean())
