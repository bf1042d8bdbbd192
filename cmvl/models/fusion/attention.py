"""Cross-attention fusion: text tokens attend to image tokens (optionally image to text too), N layers."""

from __future__ import annotations

import torch
from torch import nn

from cmvl.errors import ConfigError
from cmvl.models.attention import MultiHeadAttention
from cmvl.models.fusion.base import Fusion, mlp
from cmvl.models.tokens import FusionOutput, Tokens


class _CrossBlock(nn.Module):
    """Pre-norm block: self-attention over the queries, cross-attention to the context, feed-forward.

    Returns the updated queries, the cross-attention weights (if asked) and what the cross-attention retrieved.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_self, self.norm_cross, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads, dropout, heads_key="fusion.heads")
        self.cross_attn = MultiHeadAttention(dim, heads, dropout, heads_key="fusion.heads")
        self.ff = mlp(dim, 4 * dim, dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tokens, context: Tokens, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        h = self.norm_self(x.feats)
        feats = x.feats + self.drop(self.self_attn(h, h, h, key_padding_mask=~x.mask, need_weights=False)[0])
        h = self.norm_cross(feats)
        retrieved, weights = self.cross_attn(
            h,
            context.feats,
            context.feats,
            key_padding_mask=~context.mask,
            need_weights=need_weights,
        )
        feats = feats + self.drop(retrieved)
        feats = feats + self.drop(self.ff(self.norm_ff(feats)))
        return feats, weights, retrieved


class CrossAttentionFusion(Fusion):
    """`layers` blocks in which text attends to the image; with `co_attention` the image attends back to the text.

    `pool` picks the pooled vector: `mean` joins the mean text token with the mean of what the text retrieved from
    the image in the last block (a direct path for image evidence, which otherwise is a small residual on top of
    the text features and learns slowly), or `cls`, the first text token.
    """

    def __init__(
        self,
        *,
        dim: int,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        co_attention: bool = False,
        pool: str = "mean",
    ) -> None:
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ConfigError(f"fusion.pool={pool}: must be mean or cls")
        self.pool = pool
        self.text_blocks = nn.ModuleList(_CrossBlock(dim, heads, dropout) for _ in range(layers))
        self.vision_blocks = (
            nn.ModuleList(_CrossBlock(dim, heads, dropout) for _ in range(layers)) if co_attention else None
        )
        self.norm = nn.LayerNorm(dim)
        self.norm_retrieved = nn.LayerNorm(dim)
        self.pool_proj = nn.Linear(2 * dim, dim)

    def forward(self, vision: Tokens, text: Tokens) -> FusionOutput:
        self._attention = {}
        retrieved = text.feats
        for i, block in enumerate(self.text_blocks):
            text_feats, weights, retrieved = block(text, vision, self.record_attention)
            if self.vision_blocks is not None:
                vision_feats, v_weights, _ = self.vision_blocks[i](vision, text, self.record_attention)
                vision = vision.with_feats(vision_feats)
                self._keep_attention(f"layer{i}.vision_to_text", v_weights)
            text = text.with_feats(text_feats)
            self._keep_attention(f"layer{i}.text_to_vision", weights)
        text = text.with_feats(self.norm(text.feats))
        tokens = Tokens.concat(text, vision)
        if self.pool == "cls":
            return FusionOutput(tokens, text.feats[:, 0])
        evidence = Tokens(self.norm_retrieved(retrieved), text.mask).pooled_mean()
        return FusionOutput(tokens, self.pool_proj(torch.cat([text.pooled_mean(), evidence], dim=-1)))
