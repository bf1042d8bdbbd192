"""Spatial-transformer glimpses (Jaderberg et al., 2015) for cross-attention fusion: the question predicts where to
look, a bounded scale + translation of the image's token grid, resampled with `affine_grid` / `grid_sample`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmvl.errors import ConfigError
from cmvl.models.fusion.attention import CrossAttentionFusion
from cmvl.models.tokens import FusionOutput, Tokens


class SpatialTransformerGlimpseFusion(CrossAttentionFusion):
    """Cross-attention fusion (`fusion=attention`, same keys) whose text also attends to `glimpses` crops of the
    image grid chosen by the question.

    The mean text token goes through a small MLP to (scale x, scale y, shift x, shift y) per glimpse; its last layer
    starts at zero, so every glimpse starts as the identity (the whole grid). Each scale is 1 + (1 − min_scale)·tanh,
    within (min_scale, 2 − min_scale): the identity lies inside the range, so the scale learns from the first step
    (above 1 the glimpse sees the whole grid inside a zero border); each shift is (1 − min_scale)·tanh, so the
    smallest glimpse can reach every edge. The crop of the grid is resampled bilinearly to `glimpse_size` ×
    `glimpse_size` tokens (their features carry the grid's position code, interpolated), a learnt embedding says
    which glimpse a token belongs to, and the glimpse tokens join the image tokens the text attends to.
    `glimpse_boxes()` gives the last forward's boxes in image fractions, to compare with the objects referred to.
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
        glimpses: int = 1,
        glimpse_size: int = 4,
        min_scale: float = 0.25,
    ) -> None:
        super().__init__(dim=dim, layers=layers, heads=heads, dropout=dropout, co_attention=co_attention, pool=pool)
        if not 0 < min_scale < 1 or glimpses < 1 or glimpse_size < 1:
            raise ConfigError(
                f"fusion.min_scale={min_scale}, fusion.glimpses={glimpses}, fusion.glimpse_size={glimpse_size}: "
                "need 0 < min_scale < 1 and at least one glimpse of at least 1 token"
            )
        self.glimpses, self.glimpse_size, self.min_scale = glimpses, glimpse_size, min_scale
        self.localise = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 4 * glimpses))
        nn.init.zeros_(self.localise[-1].weight)
        nn.init.zeros_(self.localise[-1].bias)
        self.glimpse_embed = nn.Parameter(torch.zeros(glimpses, 1, dim))
        self._boxes: torch.Tensor | None = None

    def transforms(self, text: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
        """The question's glimpses: scales and shifts, each B×G×2 (x, y), in `affine_grid`'s normalised units."""
        raw = self.localise(text.pooled_mean()).float().view(-1, self.glimpses, 4)
        reach = 1.0 - self.min_scale
        return 1.0 + reach * torch.tanh(raw[..., :2]), reach * torch.tanh(raw[..., 2:])

    def glimpse_tokens(self, vision: Tokens, scale: torch.Tensor, shift: torch.Tensor) -> Tokens:
        """The crops of the vision grid, B×(G·size²)×D tokens (row-major per glimpse)."""
        if vision.grid is None:
            raise ConfigError(
                "fusion=stn_glimpse needs vision tokens with a spatial grid; this vision encoder has none"
            )
        cells = vision.grid_tokens()
        (height, width), (batch, _, dim) = cells.grid, cells.feats.shape
        fmap = cells.feats.transpose(1, 2).reshape(batch, dim, height, width)
        fmap = fmap.repeat_interleave(self.glimpses, dim=0)  # (B·G)×D×H×W
        theta = torch.zeros(batch * self.glimpses, 2, 3, device=fmap.device, dtype=torch.float32)
        theta[:, 0, 0], theta[:, 1, 1] = scale[..., 0].flatten(), scale[..., 1].flatten()
        theta[:, :, 2] = shift.flatten(0, 1)
        size = (batch * self.glimpses, dim, self.glimpse_size, self.glimpse_size)
        sampling = F.affine_grid(theta, list(size), align_corners=False).to(fmap.dtype)
        crops = F.grid_sample(fmap, sampling, mode="bilinear", padding_mode="zeros", align_corners=False)
        feats = crops.flatten(2).transpose(1, 2).reshape(batch, self.glimpses, -1, dim)  # B×G×size²×D
        feats = (feats + self.glimpse_embed.to(feats.dtype)).flatten(1, 2)
        return Tokens(feats, torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device))

    def forward(self, vision: Tokens, text: Tokens) -> FusionOutput:
        scale, shift = self.transforms(text)
        glimpses = self.glimpse_tokens(vision, scale, shift)
        low, high = (shift - scale + 1) / 2, (shift + scale + 1) / 2  # the glimpse's extent, in image fractions
        self._boxes = torch.cat([low, high], dim=-1).clamp(0.0, 1.0).detach()  # B×G×(x0, y0, x1, y1)
        return super().forward(Tokens.concat(glimpses, vision), text)

    def glimpse_boxes(self) -> torch.Tensor | None:
        """The last forward's glimpse boxes, B×G×4 (x0, y0, x1, y1) as fractions of the image's width and height,
        clipped to the image; None before the first forward."""
        return self._boxes
