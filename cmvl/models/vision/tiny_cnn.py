"""A small convolutional image encoder for CPU runs and tests."""

from __future__ import annotations

import torch
from torch import nn

from cmvl.models.tokens import Tokens
from cmvl.models.vision.grid import grid_to_tokens


def _conv_norm(in_ch: int, out_ch: int, kernel: int, stride: int) -> list[nn.Module]:
    # GroupNorm, not BatchNorm: no running statistics, so train- and eval-mode features agree from the first
    # step (BatchNorm's running estimates lag far behind a fast-moving small net), results do not depend on the
    # per-device batch size, and 1-process and DDP runs compute the same function.
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - stride + 1) // 2, bias=False),
        nn.GroupNorm(min(8, out_ch), out_ch),
        nn.GELU(),
    ]


class TinyCNNEncoder(nn.Module):
    """Patchify stem (stride `stem_stride`), then `downsample` stride-2 stages, each with a 3×3 refinement conv.

    With the defaults a 64 px image becomes an 8×8 grid of `channels`-wide tokens for ~14 M multiply-adds.
    """

    def __init__(self, *, channels: int = 96, stem_stride: int = 4, downsample: int = 1, freeze: str = "none") -> None:
        super().__init__()
        width = channels // 2**downsample
        layers = _conv_norm(3, width, stem_stride, stem_stride) + _conv_norm(width, width, 3, 1)
        for _ in range(downsample):
            layers += _conv_norm(width, width * 2, 3, 2) + _conv_norm(width * 2, width * 2, 3, 1)
            width *= 2
        self.body = nn.Sequential(*layers)
        self.out_dim = width
        if freeze == "all":
            self.requires_grad_(False)

    def forward(self, images_BCHW: torch.Tensor) -> Tokens:
        return grid_to_tokens(self.body(images_BCHW))
