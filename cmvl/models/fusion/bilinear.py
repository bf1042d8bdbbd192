"""Low-rank bilinear fusion: MFB (multi-modal factorised bilinear pooling, Yu et al., ICCV 2017) with
question-guided image attention (the MFB + co-attention VQA model, without the question self-attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmvl.models.fusion.base import Fusion
from cmvl.models.tokens import FusionOutput, Tokens


class MFB(nn.Module):
    """z = normalise(SumPool_k(Ux ∘ Vy)): a rank-`factors` bilinear form per output unit.

    Both inputs are projected to `out_dim × factors`, multiplied element-wise, summed over each group of `factors`,
    then power-normalised (signed square root) and L2-normalised, as in the paper. `x`: …×Dx, `y`: …×Dy
    (broadcastable leading dimensions), output …×out_dim.
    """

    def __init__(self, x_dim: int, y_dim: int, out_dim: int, factors: int, dropout: float) -> None:
        super().__init__()
        self.out_dim, self.factors = out_dim, factors
        self.proj_x = nn.Linear(x_dim, out_dim * factors)
        self.proj_y = nn.Linear(y_dim, out_dim * factors)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        joint = self.drop(self.proj_x(x) * self.proj_y(y))
        z = joint.unflatten(-1, (self.out_dim, self.factors)).sum(-1)
        z = torch.sign(z) * torch.sqrt(z.abs() + 1e-8)  # signed square root (eps: finite gradient at 0)
        return F.normalize(z, dim=-1)


class BilinearFusion(Fusion):
    """Question vector q = masked mean of the text tokens.

    1. Attention: MFB(image token, q) → `glimpses` attention logits per token → softmax over the image tokens.
    2. Each glimpse's attended image vector is fused with q by a second MFB; the glimpses are concatenated and
       projected to `dim` (the pooled vector).
    Attention weights are exposed as `glimpses` (B×glimpses×1×N, one query per glimpse).
    """

    def __init__(
        self, *, dim: int, factors: int = 5, mfb_dim: int | None = None, glimpses: int = 2, dropout: float = 0.1
    ) -> None:
        super().__init__()
        mfb_dim = mfb_dim or dim
        self.glimpses = glimpses
        self.attn_mfb = MFB(dim, dim, mfb_dim, factors, dropout)
        self.attn_logits = nn.Sequential(nn.Linear(mfb_dim, mfb_dim), nn.GELU(), nn.Linear(mfb_dim, glimpses))
        self.fuse_mfb = MFB(glimpses * dim, dim, mfb_dim, factors, dropout)
        self.out = nn.Sequential(nn.Linear(mfb_dim, dim), nn.LayerNorm(dim))

    def forward(self, vision: Tokens, text: Tokens) -> FusionOutput:
        self._attention = {}
        question = text.pooled_mean()  # B×D
        logits = self.attn_logits(self.attn_mfb(vision.feats, question.unsqueeze(1)))  # B×N×G
        logits = logits.masked_fill(~vision.mask.unsqueeze(-1), float("-inf"))
        weights = logits.softmax(dim=1)  # over image tokens
        attended = torch.einsum("bng,bnd->bgd", weights, vision.feats).flatten(1)  # B×(G·D)
        if self.record_attention:
            self._attention["glimpses"] = weights.transpose(1, 2).unsqueeze(2).detach()
        pooled = self.out(self.fuse_mfb(attended, question))
        tokens = Tokens.concat(text, vision)
        return FusionOutput(tokens, pooled)
