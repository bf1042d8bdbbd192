"""Turning a convolutional feature map into `Tokens`, with fixed 2-D positions so fusion can reason spatially."""

from __future__ import annotations

import math

import torch

from cmvl.models.tokens import Tokens


def sincos_2d(height: int, width: int, dim: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed 2-D sine-cosine position code, (H·W)×dim (dim divisible by 4), as in MAE / ViT variants."""
    assert dim % 4 == 0, "position code needs dim divisible by 4"
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    parts = []
    for coord in (xs.flatten(), ys.flatten()):
        angles = coord[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    return (torch.cat(parts, dim=1) / math.sqrt(2)).to(dtype)


def grid_to_tokens(feat_BCHW: torch.Tensor, *, add_positions: bool = True) -> Tokens:
    """B×C×H×W feature map → H·W tokens in row-major order with their grid (H, W), plus the 2-D position code."""
    b, c, h, w = feat_BCHW.shape
    feats_BND = feat_BCHW.flatten(2).transpose(1, 2)
    if add_positions:
        feats_BND = feats_BND + sincos_2d(h, w, c, device=feat_BCHW.device, dtype=feat_BCHW.dtype)
    mask = torch.ones(b, h * w, dtype=torch.bool, device=feat_BCHW.device)
    return Tokens(feats_BND, mask, (h, w))
