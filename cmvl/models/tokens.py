"""The one currency between encoders, fusion and heads."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Tokens:
    """A batch of token sequences: `feats` B×N×D and `mask` B×N (True = a real token, False = padding).

    `grid` (H, W): the last H·W tokens are an H×W spatial grid in row-major order (a CNN feature map, ViT patches),
    after any tokens that are not places in the image ([CLS], registers, text in front of it); None when the
    tokens have no spatial layout (text, pooled or pruned tokens). Heads that point into the image read it.
    """

    feats: torch.Tensor
    mask: torch.Tensor
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.grid is not None:
            height, width = self.grid
            if height < 1 or width < 1 or height * width > self.feats.shape[1]:
                raise ValueError(f"a {height}×{width} grid does not fit in {self.feats.shape[1]} tokens")
            self.grid = (int(height), int(width))

    @staticmethod
    def concat(*parts: Tokens) -> Tokens:
        """The parts side by side along the token axis (masks concatenated the same way). The last part's grid is
        kept: its grid tokens are still the last ones."""
        return Tokens(
            torch.cat([p.feats for p in parts], dim=1), torch.cat([p.mask for p in parts], dim=1), parts[-1].grid
        )

    def with_feats(self, feats: torch.Tensor) -> Tokens:
        """The same tokens (mask, grid) with new features of the same length, e.g. after a projection or a block."""
        return replace(self, feats=feats)

    def select(self, index: torch.Tensor) -> Tokens:
        """The rows `index` (B′) of the batch, e.g. each text's image among the distinct images of a batch."""
        return Tokens(self.feats[index], self.mask[index], self.grid)

    def grid_tokens(self) -> Tokens:
        """Only the grid's H·W tokens (what comes before them dropped); an error without a grid."""
        if self.grid is None:
            raise ValueError("these tokens have no spatial grid")
        cells = self.grid[0] * self.grid[1]
        return Tokens(self.feats[:, -cells:], self.mask[:, -cells:], self.grid)

    def pooled_mean(self) -> torch.Tensor:
        """Masked mean over tokens, B×D."""
        weights = self.mask.unsqueeze(-1).to(self.feats.dtype)
        return (self.feats * weights).sum(1) / weights.sum(1).clamp_min(1.0)


@dataclass
class FusionOutput:
    """Fused tokens (B×N×D with mask, and the image's grid where the fused tokens keep it) and a pooled vector
    B×D that heads read."""

    tokens: Tokens
    pooled: torch.Tensor
