"""Encoders → projection to `model.dim` → fusion → task heads."""

from __future__ import annotations

import torch
from torch import nn

from cmvl.models.fusion.base import Fusion
from cmvl.models.tokens import FusionOutput, Tokens


def normalize_images(images_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 B×3×H×W → float, scaled to [0, 1] and standardised per channel."""
    return (images_uint8.float().div_(255) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


class VisionLanguageModel(nn.Module):
    """Holds the two encoders, their projections, the fusion and one head per task (`heads[task_name]`)."""

    def __init__(
        self,
        *,
        vision: nn.Module,
        text: nn.Module,
        fusion: Fusion,
        heads: dict[str, nn.Module],
        dim: int,
        image_mean: list[float],
        image_std: list[float],
    ) -> None:
        super().__init__()
        # Images arrive as uint8; normalising here runs on the model's device.
        self.register_buffer("image_mean", torch.tensor(image_mean), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std), persistent=False)
        self.vision, self.text, self.fusion = vision, text, fusion
        self.vision_proj = nn.Sequential(nn.Linear(vision.out_dim, dim), nn.LayerNorm(dim))
        self.text_proj = nn.Sequential(nn.Linear(text.out_dim, dim), nn.LayerNorm(dim))
        self.heads = nn.ModuleDict(heads)

    def encode(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> tuple[Tokens, Tokens]:
        """Each of the U images is encoded once; `image_index` (B) picks the image of each of the B texts
        (None: image i goes with text i)."""
        vision = self.encode_images(images)
        if image_index is not None:
            vision = Tokens(vision.feats[image_index], vision.mask[image_index])
        return vision, self.encode_texts(input_ids, attention_mask)

    def encode_images(self, images: torch.Tensor) -> Tokens:
        """uint8 images U×3×H×W → vision tokens at `model.dim`."""
        v = self.vision(normalize_images(images, self.image_mean, self.image_std))
        return Tokens(self.vision_proj(v.feats), v.mask)

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tokens:
        """Token ids B×L → text tokens at `model.dim`."""
        t = self.text(input_ids, attention_mask)
        return Tokens(self.text_proj(t.feats), t.mask)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> FusionOutput:
        vision, text = self.encode(images, input_ids, attention_mask, image_index)
        return self.fusion(vision, text)
