"""FiLM: the question predicts a per-channel scale and shift for every image token (Perez et al., 2018)."""

from __future__ import annotations

import torch
from torch import nn

from cmvl.models.attention import MultiHeadAttention
from cmvl.models.fusion.base import Fusion
from cmvl.models.tokens import FusionOutput, Tokens


class _FiLMBlock(nn.Module):
    """Self-attention over image tokens (spatial mixing), then a feature-wise-modulated residual MLP."""

    def __init__(self, dim: int, heads: int, hidden_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm_attn, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dropout, heads_key="fusion.heads")
        self.fc_in = nn.Linear(dim, hidden_mult * dim)
        self.fc_out = nn.Linear(hidden_mult * dim, dim)
        self.film = nn.Linear(dim, 2 * hidden_mult * dim)
        self.act, self.drop = nn.GELU(), nn.Dropout(dropout)

    def forward(self, x: Tokens, condition_BD: torch.Tensor, need_weights: bool):
        h = self.norm_attn(x.feats)
        attended, weights = self.attn(h, h, h, key_padding_mask=~x.mask, need_weights=need_weights)
        feats = x.feats + self.drop(attended)
        gamma, beta = self.film(condition_BD).unsqueeze(1).chunk(2, dim=-1)
        h = self.act((1 + gamma) * self.fc_in(self.norm_mlp(feats)) + beta)
        return feats + self.drop(self.fc_out(h)), weights


class FiLMFusion(Fusion):
    """`layers` FiLM blocks over the image tokens conditioned on the mean text token; pooled = mean ⊕ max of the
    modulated image tokens, projected back to `dim`."""

    def __init__(
        self, *, dim: int, layers: int = 2, heads: int = 4, hidden_mult: int = 2, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_FiLMBlock(dim, heads, hidden_mult, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.pool = nn.Sequential(nn.Linear(2 * dim, dim), nn.LayerNorm(dim))

    def forward(self, vision: Tokens, text: Tokens) -> FusionOutput:
        self._attention = {}
        condition = text.pooled_mean()
        for i, block in enumerate(self.blocks):
            feats, weights = block(vision, condition, self.record_attention)
            vision = vision.with_feats(feats)
            self._keep_attention(f"layer{i}.vision_self", weights)
        vision = vision.with_feats(self.norm(vision.feats))
        masked_max = vision.feats.masked_fill(~vision.mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        pooled = self.pool(torch.cat([vision.pooled_mean(), masked_max], dim=-1))
        tokens = Tokens.concat(text, vision)
        return FusionOutput(tokens, pooled)
