"""Late fusion: pooled vision ⊕ pooled text → MLP."""

from __future__ import annotations

import torch
from torch import nn

from cmvl.models.fusion.base import Fusion, mlp
from cmvl.models.tokens import FusionOutput, Tokens


class ConcatFusion(Fusion):
    def __init__(self, *, dim: int, hidden_mult: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.mlp = mlp(2 * dim, hidden_mult * dim, dim, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, vision: Tokens, text: Tokens) -> FusionOutput:
        pooled = self.norm(self.mlp(torch.cat([vision.pooled_mean(), text.pooled_mean()], dim=-1)))
        tokens = Tokens.concat(text, vision)
        return FusionOutput(tokens, pooled)
