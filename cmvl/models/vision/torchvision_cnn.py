"""torchvision ResNets as grid encoders (last stage features as tokens)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from cmvl.errors import ConfigError
from cmvl.models.tokens import Tokens
from cmvl.models.vision.grid import grid_to_tokens

_RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


class TorchvisionResNetEncoder(nn.Module):
    """A torchvision ResNet without its pooling and classifier; `pretrained` is false, a weights file, or
    ``torchvision`` for the library's ImageNet weights (downloaded, so online only)."""

    def __init__(self, *, name: str = "resnet18", pretrained: bool | str = False, freeze: str = "none") -> None:
        super().__init__()
        if name not in _RESNETS:
            raise ConfigError(f"vision.name: unknown ResNet '{name}' (choices: {', '.join(_RESNETS)})")
        weights = "DEFAULT" if pretrained == "torchvision" else None
        net = getattr(torchvision.models, name)(weights=weights)
        if isinstance(pretrained, str) and pretrained != "torchvision":
            path = Path(pretrained)
            if not path.is_file():
                raise ConfigError(f"vision.pretrained: weights file not found: {path}")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.body = nn.Sequential(*list(net.children())[:-2])
        self.out_dim = _RESNETS[name]
        if freeze == "all":
            self.requires_grad_(False)

    def forward(self, images_BCHW: torch.Tensor) -> Tokens:
        return grid_to_tokens(self.body(images_BCHW))
