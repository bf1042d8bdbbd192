"""The fusion interface: (vision Tokens, text Tokens), both already at `model.dim`, → `FusionOutput`."""

from __future__ import annotations

import torch
from torch import nn

from cmvl.models.tokens import FusionOutput, Tokens


class Fusion(nn.Module):
    """Base class. Set `record_attention = True` to keep the last forward's attention weights."""

    def __init__(self) -> None:
        super().__init__()
        self.record_attention = False
        self._attention: dict[str, torch.Tensor] = {}

    def attention_maps(self) -> dict[str, torch.Tensor]:
        """Attention weights of the last forward (name → B×heads×Nq×Nk), empty if not recorded or not attentive."""
        return dict(self._attention)

    def forward(self, vision: Tokens, text: Tokens) -> FusionOutput:  # pragma: no cover - interface
        raise NotImplementedError


def mlp(dim_in: int, dim_hidden: int, dim_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim_hidden, dim_out))
