"""`vl_fusion`: encoders → projection to `model.dim` → fusion → task heads (VQA, grounding, captioning, retrieval,
tagging and their multitask)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cmvl.models.families.base import ModelFamily, Recipe
from cmvl.models.fusion.base import Fusion
from cmvl.models.tokens import FusionOutput, Tokens


def normalize_images(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 B×3×H×W → float, scaled to [0, 1] and standardised per channel. Float images are taken as already in
    [0, 1]: the entry of image-space attacks (`cmvl eval attack=pgd`), which perturb pixels before normalisation."""
    scaled = images.float().div_(255) if images.dtype == torch.uint8 else images
    return (scaled - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


class VisionLanguageModel(ModelFamily):
    """Holds the vision and text encoders with their projections to `dim`, the fusion and one head per task
    (`heads[task_name]`). Parts the task does not need (`Task.parts`) are None: a captioning or tagging model has
    no text encoder and no fusion."""

    name = "vl_fusion"
    parts = frozenset({"vision", "text", "fusion"})

    def __init__(
        self,
        *,
        vision: nn.Module | None = None,
        text: nn.Module | None = None,
        fusion: Fusion | None = None,
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
        self.vision_proj = None if vision is None else nn.Sequential(nn.Linear(vision.out_dim, dim), nn.LayerNorm(dim))
        self.text_proj = None if text is None else nn.Sequential(nn.Linear(text.out_dim, dim), nn.LayerNorm(dim))
        self.heads = nn.ModuleDict(heads)
        # Adversarial perturbations (cmvl/training/adversarial.py): when set, a callable (site, tokens) → tokens that
        # the projected vision and text tokens pass through, on their way to fusion and the heads.
        self.perturbation: Callable[[str, Tokens], Tokens] | None = None

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> VisionLanguageModel:
        cfg, parts = recipe.config, recipe.parts
        # Built in the order the model always was (encoders, fusion, heads, then the projections in __init__), so a
        # seed gives the parameters it gave before; a part the task does not need is skipped.
        vision = recipe.build(cfg.vision.encoder) if "vision" in parts else None
        text = recipe.build(cfg.text.encoder, tokenizer=recipe.tokenizer) if "text" in parts else None
        fusion = recipe.build(cfg.fusion) if "fusion" in parts else None
        return cls(
            vision=vision,
            text=text,
            fusion=fusion,
            heads=recipe.heads(cfg.model.dim),
            dim=cfg.model.dim,
            image_mean=list(cfg.data.image.mean),
            image_std=list(cfg.data.image.std),
        )

    def encode(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> tuple[Tokens, Tokens]:
        """Each of the U images is encoded once; `image_index` (B) picks the image of each of the B texts
        (None: image i goes with text i)."""
        return self.encode_images(images, image_index), self.encode_texts(input_ids, attention_mask)

    def encode_images(self, images: torch.Tensor, image_index: torch.Tensor | None = None) -> Tokens:
        """uint8 images U×3×H×W → vision tokens at `model.dim` (with the encoder's grid, where it has one); with
        `image_index` (B), the tokens of each row's image. The perturbation hook sees the rows' tokens, so an
        adversarial perturbation belongs to one row (question, caption), not to every row of its image in the
        batch: a row's perturbation does not depend on which other rows of its image share its batch, or its
        process under DDP."""
        v = self.part("vision")(normalize_images(images, self.image_mean, self.image_std))
        v = v.with_feats(self.vision_proj(v.feats))
        return self._perturbed("vision", v if image_index is None else v.select(image_index))

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tokens:
        """Token ids B×L → text tokens at `model.dim`."""
        t = self.part("text")(input_ids, attention_mask)
        return self._perturbed("text", t.with_feats(self.text_proj(t.feats)))

    def _perturbed(self, site: str, tokens: Tokens) -> Tokens:
        return tokens if self.perturbation is None else self.perturbation(site, tokens)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> FusionOutput:
        vision, text = self.encode(images, input_ids, attention_mask, image_index)
        return self.part("fusion")(vision, text)
