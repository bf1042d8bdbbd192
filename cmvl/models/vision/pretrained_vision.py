"""Pretrained vision backbones as token encoders: any timm model, any Hugging Face vision model, torchvision ViT.

Convolutional backbones give their last feature map as a grid of tokens (with the fixed 2-D position code);
transformers give their output tokens as they are (CLS first where the model has one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from cmvl.errors import ConfigError
from cmvl.models.freeze import apply_freeze
from cmvl.models.lora import apply_lora
from cmvl.models.pretrained import resolve_pretrained
from cmvl.models.remote_code import load_auto_model
from cmvl.models.tokens import Tokens
from cmvl.models.vision.grid import grid_to_tokens


def load_weights_file(model: nn.Module, path: str, what: str) -> None:
    """A state_dict saved with torch.save (or a .safetensors file); classifier weights the encoder dropped are
    ignored, anything else that does not fit is an error."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what}.pretrained: weights file not found: {file}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
    own = model.state_dict()
    extra = [k for k in state if k not in own]
    if any(not k.startswith(("head", "fc", "classifier", "heads")) for k in extra):
        raise ConfigError(f"{what}.pretrained: {file} does not fit the model (unexpected keys: {extra[:3]})")
    missing = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False).missing_keys
    if missing:
        raise ConfigError(f"{what}.pretrained: {file} lacks weights for {missing[:3]}")


def feature_tokens(features: torch.Tensor, grid: tuple[int, int] | None = None) -> Tokens:
    """B×C×H×W feature map → grid tokens with positions; B×N×D token sequence → as is, with `grid` (the patch grid
    its last H·W tokens form) where the sequence holds one: None when it does not (e.g. a model that pools its
    patches into fewer tokens than the patch grid)."""
    if features.ndim == 4:
        return grid_to_tokens(features)
    mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    if grid is not None and grid[0] * grid[1] > features.shape[1]:
        grid = None
    return Tokens(features, mask, grid)


def patch_grid(image_hw: tuple[int, int], patch_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """The patch grid (H, W) of an image of size `image_hw` cut into `patch_size` patches (None: unknown)."""
    if patch_size is None:
        return None
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    return image_hw[0] // ph, image_hw[1] // pw


class TimmEncoder(nn.Module):
    """Any `timm` model by name, without its classifier; tokens from `forward_features`.

    `pretrained`: false (random init), true (timm's hub weights: online only) or a weights file.
    `model_kwargs` go to `timm.create_model` (e.g. `img_size: 64` for a ViT at another resolution).
    """

    def __init__(
        self,
        *,
        name: str,
        pretrained: bool | str = False,
        freeze: str | int = "none",
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        import timm

        if not timm.list_models(name) and not timm.is_model(name):
            raise ConfigError(f"vision.encoder.name: timm has no model '{name}'")
        self.model = timm.create_model(name, pretrained=pretrained is True, num_classes=0, **(model_kwargs or {}))
        if isinstance(pretrained, str):
            load_weights_file(self.model, resolve_pretrained(pretrained), "vision.encoder")
        self.out_dim = self.model.num_features
        apply_freeze(self.model, freeze, "vision.encoder")

    def forward(self, images_BCHW: torch.Tensor) -> Tokens:
        return feature_tokens(self.model.forward_features(images_BCHW), self._grid(images_BCHW))

    def _grid(self, images_BCHW: torch.Tensor) -> tuple[int, int] | None:
        """A ViT-style model's patch grid for this input (its tokens: prefix tokens, then the patches)."""
        patch_embed = getattr(self.model, "patch_embed", None)
        if patch_embed is None:
            return None
        size = tuple(images_BCHW.shape[-2:])
        if hasattr(patch_embed, "dynamic_feat_size"):
            return tuple(patch_embed.dynamic_feat_size(size))
        return tuple(patch_embed.grid_size) if getattr(patch_embed, "grid_size", None) else None


class HFVisionEncoder(nn.Module):
    """Any Hugging Face vision model via `AutoModel` (ViT, DeiT, CLIP / SigLIP vision towers, …) from a local
    directory, `pkg://package/subdir` or a hub name. For a full CLIP/SigLIP checkpoint the vision tower is used.
    Tokens = `last_hidden_state` (B×N×D; for CNN-style models, the B×C×H×W map as a grid)."""

    def __init__(
        self, *, name: str, pretrained: bool = True, freeze: str | int = "none", lora: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        model = load_auto_model(name, pretrained=pretrained, key="vision.encoder.name")
        if hasattr(model, "vision_model"):  # CLIPModel / SiglipModel: keep the image tower only
            model = model.vision_model
        self.model = model
        config = getattr(model.config, "vision_config", model.config)
        self.out_dim = getattr(config, "hidden_size", None) or config.hidden_sizes[-1]
        apply_freeze(self.model, freeze, "vision.encoder")
        apply_lora(self.model, lora, "vision.lora")  # adapters (vision.lora.r): the other weights stop learning

    def forward(self, images_BCHW: torch.Tensor) -> Tokens:
        config = getattr(self.model.config, "vision_config", self.model.config)
        grid = patch_grid(tuple(images_BCHW.shape[-2:]), getattr(config, "patch_size", None))
        return feature_tokens(self.model(pixel_values=images_BCHW).last_hidden_state, grid)


def _torchvision_vit(name: str, image_size: int, resized: dict[str, int]) -> torchvision.models.VisionTransformer:
    """torchvision's ViT `name` (random init) with the sizes in `resized` replaced; the others are the named model's,
    read off a copy built on the meta device (no memory, no weights)."""
    if not resized:
        return getattr(torchvision.models, name)(image_size=image_size)
    with torch.device("meta"):
        named = getattr(torchvision.models, name)(image_size=image_size)
    block = named.encoder.layers[0]
    sizes = {
        "num_layers": len(named.encoder.layers),
        "hidden_dim": named.hidden_dim,
        "num_heads": block.self_attention.num_heads,
        "mlp_dim": block.mlp[0].out_features,
        **resized,
    }
    bad = next((f"{k}={v}" for k, v in sizes.items() if not isinstance(v, int) or v < 1), None)
    if bad is not None:
        raise ConfigError(f"vision.encoder: {bad} must be a positive integer")
    if sizes["hidden_dim"] % sizes["num_heads"]:
        raise ConfigError(f"vision.encoder: width {sizes['hidden_dim']} is not divisible by heads {sizes['num_heads']}")
    return torchvision.models.VisionTransformer(image_size=image_size, patch_size=named.patch_size, **sizes)


class TorchvisionViTEncoder(nn.Module):
    """torchvision ViT (`vit_b_16`, `vit_b_32`, `vit_l_16`, …): the encoder's output tokens, CLS first.

    `pretrained`: false, ``torchvision`` (the library's ImageNet weights, online only; 224 px) or a weights file.
    Random-init models may use another `image_size` (a multiple of the patch size) and other sizes (`layers`,
    `width`, `heads`, `mlp_width`; None = the named model's): the named architecture at a size a test or a quick
    trial affords.
    """

    def __init__(
        self,
        *,
        name: str = "vit_b_16",
        pretrained: bool | str = False,
        freeze: str | int = "none",
        image_size: int = 224,
        layers: int | None = None,
        width: int | None = None,
        heads: int | None = None,
        mlp_width: int | None = None,
    ) -> None:
        super().__init__()
        if not name.startswith("vit_") or not hasattr(torchvision.models, name):
            raise ConfigError(f"vision.encoder.name: torchvision has no ViT '{name}'")
        sizes = {"num_layers": layers, "hidden_dim": width, "num_heads": heads, "mlp_dim": mlp_width}
        resized = {key: value for key, value in sizes.items() if value is not None}
        if pretrained == "torchvision":
            if resized:
                raise ConfigError(
                    "vision.encoder: layers / width / heads / mlp_width change the architecture, so torchvision's "
                    f"weights for {name} do not fit; leave them null with pretrained=torchvision"
                )
            net = getattr(torchvision.models, name)(weights="DEFAULT")
        else:
            net = _torchvision_vit(name, image_size, resized)
            if isinstance(pretrained, str):
                load_weights_file(net, resolve_pretrained(pretrained), "vision.encoder")
        net.heads = nn.Identity()
        self.net = net
        self.out_dim = net.hidden_dim
        apply_freeze(self.net, freeze, "vision.encoder")

    def forward(self, images_BCHW: torch.Tensor) -> Tokens:
        x = self.net._process_input(images_BCHW)
        x = torch.cat([self.net.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return feature_tokens(self.net.encoder(x), patch_grid(tuple(images_BCHW.shape[-2:]), self.net.patch_size))
