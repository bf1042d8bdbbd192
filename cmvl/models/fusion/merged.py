"""Single-stream fusion (ViLT / VisualBERT style): one transformer over [CLS; text tokens; image tokens]."""

from __future__ import annotations

import torch
from torch import nn

from cmvl.errors import ConfigError
from cmvl.models.fusion.base import Fusion, TransformerBlock
from cmvl.models.tokens import FusionOutput, Tokens


class MergedFusion(Fusion):
    """Text and image tokens, each tagged with a learned modality embedding, are concatenated behind a learned
    [CLS] token and mixed by `layers` pre-norm self-attention blocks; every token can attend to every other.

    Positions come from the encoders (the text encoder's own, the vision grid's 2-D code). `pool`: `cls` (the
    [CLS] token) or `mean` (masked mean over all tokens).
    """

    def __init__(
        self, *, dim: int, layers: int = 2, heads: int = 4, ff_mult: int = 4, dropout: float = 0.1, pool: str = "cls"
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ConfigError(f"fusion.pool={pool}: must be cls or mean")
        self.pool = pool
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.modality = nn.Parameter(torch.randn(2, dim) * 0.02)  # [text, image]
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, ff_mult, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, vision: Tokens, text: Tokens) -> FusionOutput:
        self._attention = {}
        batch = text.feats.shape[0]
        feats = torch.cat(
            [self.cls.expand(batch, -1, -1), text.feats + self.modality[0], vision.feats + self.modality[1]], dim=1
        )
        cls_mask = torch.ones(batch, 1, dtype=torch.bool, device=feats.device)
        mask = torch.cat([cls_mask, text.mask, vision.mask], dim=1)
        for i, block in enumerate(self.blocks):
            feats, weights = block(feats, mask, self.record_attention)
            self._keep_attention(f"layer{i}.joint", weights)
        tokens = Tokens(self.norm(feats), mask)
        pooled = tokens.feats[:, 0] if self.pool == "cls" else tokens.pooled_mean()
        # [text; image] tokens: the image's grid tokens are still the last ones.
        return FusionOutput(Tokens(tokens.feats[:, 1:], mask[:, 1:], vision.grid), pooled)
