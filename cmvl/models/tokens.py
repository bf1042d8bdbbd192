"""The one currency between encoders, fusion and heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Tokens:
    """A batch of token sequences: `feats` B×N×D and `mask` B×N (True = a real token, False = padding)."""

    feats: torch.Tensor
    mask: torch.Tensor

    @staticmethod
    def concat(*parts: Tokens) -> Tokens:
        """The parts side by side along the token axis (masks concatenated the same way)."""
        return Tokens(torch.cat([p.feats for p in parts], dim=1), torch.cat([p.mask for p in parts], dim=1))

    def pooled_mean(self) -> torch.Tensor:
        """Masked mean over tokens, B×D."""
        weights = self.mask.unsqueeze(-1).to(self.feats.dtype)
        return (self.feats * weights).sum(1) / weights.sum(1).clamp_min(1.0)


@dataclass
class FusionOutput:
    """Fused tokens (B×N×D with mask) and a pooled vector B×D that heads read."""

    tokens: Tokens
    pooled: torch.Tensor
