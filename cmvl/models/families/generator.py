"""`generator`: text encoder → projection to `model.dim` → an image generator (`generator=cvae|diffusion`) that
reads the caption's tokens. The family of `task=generation`; every `text=` choice conditions it, frozen or not."""

from __future__ import annotations

import torch
from torch import nn

from cmvl.models.families.base import ModelFamily, Recipe
from cmvl.models.generators.base import GeneratorLosses, ImageGenerator, Progress, no_progress
from cmvl.models.tokens import Tokens


def images_to_unit_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 B×3×H×W → float in [-1, 1], the range generators work in."""
    return images_uint8.float().div(127.5).sub(1.0)


def unit_range_to_images(images: torch.Tensor) -> torch.Tensor:
    """float B×3×H×W in [-1, 1] → uint8, as the loaders deliver images (and PNGs store them)."""
    return images.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


class TextToImageModel(ModelFamily):
    """The run's text encoder with its projection to `dim`, a learnt "no caption" condition (one token) that
    condition dropout and classifier-free guidance use, and the generator. Heads: none (the generator is the
    task's output)."""

    name = "generator"
    parts = frozenset({"text", "generator"})

    def __init__(self, *, text: nn.Module, generator: ImageGenerator, heads: dict[str, nn.Module], dim: int) -> None:
        super().__init__()
        self.text = text
        self.text_proj = nn.Sequential(nn.Linear(text.out_dim, dim), nn.LayerNorm(dim))
        self.generator = generator
        self.null_condition = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.heads = nn.ModuleDict(heads)

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> TextToImageModel:
        cfg = recipe.config
        text = recipe.build(cfg.text.encoder, tokenizer=recipe.tokenizer)
        generator = recipe.build(cfg.generator, image_size=int(cfg.data.image.size), dim=int(cfg.model.dim))
        return cls(text=text, generator=generator, heads=recipe.heads(cfg.model.dim), dim=cfg.model.dim)

    def condition(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tokens:
        """Token ids B×L → the captions' tokens at `model.dim`, what the generator reads."""
        t = self.part("text")(input_ids, attention_mask)
        return t.with_feats(self.text_proj(t.feats))

    def no_condition(self, batch: int, length: int = 1) -> Tokens:
        """The "no caption" condition for `batch` rows: the learnt token first, `length - 1` masked-out ones after."""
        feats = nn.functional.pad(self.null_condition, (0, 0, 0, length - 1)).expand(batch, -1, -1)
        mask = torch.zeros(batch, length, dtype=torch.bool, device=feats.device)
        mask[:, 0] = True
        return Tokens(feats, mask)

    def drop_conditions(self, cond: Tokens, share: float) -> Tokens:
        """`cond` with about `share` of its rows replaced by the "no caption" condition (training only)."""
        if share <= 0:
            return cond
        b, length = cond.mask.shape
        dropped = torch.rand(b, device=cond.feats.device) < share
        null = self.no_condition(b, length)
        feats = torch.where(dropped[:, None, None], null.feats.to(cond.feats.dtype), cond.feats)
        mask = torch.where(dropped[:, None], null.mask, cond.mask)
        return Tokens(feats, mask)

    def losses(
        self,
        images_uint8: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> GeneratorLosses:
        """The generator's objective for B images (uint8, one per caption) and their captions' token ids."""
        cond = self.condition(input_ids, attention_mask)
        if self.training:
            cond = self.drop_conditions(cond, self.generator.cond_dropout)
        images = images_to_unit_range(images_uint8).to(cond.feats.dtype)
        return self.generator.losses(images, cond, generator=generator)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        generator: torch.Generator,
        steps: int | None = None,
        guidance_scale: float | None = None,
        progress: Progress = no_progress,
    ) -> torch.Tensor:
        """uint8 images B×3×H×W for B captions' token ids; the same `generator` state gives the same images."""
        cond = self.condition(input_ids, attention_mask)
        uncond = self.no_condition(cond.feats.shape[0])
        images = self.generator.sample(
            cond, uncond, generator=generator, steps=steps, guidance_scale=guidance_scale, progress=progress
        )
        return unit_range_to_images(images)
