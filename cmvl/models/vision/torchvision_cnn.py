"""Any torchvision classification CNN as a grid encoder: the last feature map (before pooling) becomes tokens."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from cmvl.errors import ConfigError
from cmvl.models.tokens import Tokens
from cmvl.models.vision.grid import grid_to_tokens


def _stem_and_stages(net: nn.Module, name: str) -> tuple[list[nn.Module], list[nn.Module]]:
    """Split a torchvision classifier into its stem and its stages (in order), dropping pooling and classifier.

    ResNet-style models (ResNet, ResNeXt, Wide ResNet, RegNet) keep everything before `avgpool`; models with a
    `features` trunk (VGG, DenseNet, ConvNeXt, EfficientNet, MobileNet, MNASNet) keep that trunk.
    """
    if hasattr(net, "layer4"):  # ResNet family
        stem = [net.conv1, net.bn1, net.relu, net.maxpool]
        return stem, [net.layer1, net.layer2, net.layer3, net.layer4]
    if hasattr(net, "trunk_output"):  # RegNet
        return [net.stem], list(net.trunk_output.children())
    if isinstance(getattr(net, "features", None), nn.Sequential):
        children = list(net.features.children())
        return children[:1], children[1:]
    raise ConfigError(
        f"vision.encoder.name={name}: not a torchvision CNN with a feature trunk"
        f" (ViTs: vision=vit_b16 vision.encoder.name={name})"
    )


class TorchvisionCNNEncoder(nn.Module):
    """A torchvision CNN without its pooling and classifier (`resnet18`, `resnet50`, `convnext_tiny`,
    `efficientnet_b0`, `mobilenet_v3_small`, `regnet_y_400mf`, ...).

    `pretrained`: false, a state_dict file, or ``torchvision`` for the library's ImageNet weights (downloaded, so
    online only). `freeze`: none | all | N (the stem and the first N stages). Frozen stages also keep their
    normalisation statistics fixed (they stay in eval mode while the rest trains).
    """

    def __init__(self, *, name: str = "resnet18", pretrained: bool | str = False, freeze: str | int = "none") -> None:
        super().__init__()
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ConfigError(f"vision.encoder.name: unknown torchvision classification model '{name}'")
        net = torchvision.models.get_model(name, weights="DEFAULT" if pretrained == "torchvision" else None)
        if isinstance(pretrained, str) and pretrained != "torchvision":
            path = Path(pretrained)
            if not path.is_file():
                raise ConfigError(f"vision.encoder.pretrained: weights file not found: {path}")
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        stem, stages = _stem_and_stages(net, name)
        self.body = nn.Sequential(*stem, *stages)
        with torch.no_grad():
            self.out_dim = int(self.body.eval()(torch.zeros(1, 3, 64, 64)).shape[1])
        self.body.train()
        self._frozen = self._freeze(stem, stages, freeze)

    @staticmethod
    def _freeze(stem: list[nn.Module], stages: list[nn.Module], freeze: str | int) -> list[nn.Module]:
        if freeze == "none":
            return []
        if freeze == "all":
            frozen = [*stem, *stages]
        elif isinstance(freeze, int) and not isinstance(freeze, bool) and 0 <= freeze <= len(stages):
            frozen = [*stem, *stages[:freeze]]
        else:
            raise ConfigError(
                f"vision.encoder.freeze={freeze!r}: must be none, all or a number of stages (0..{len(stages)})"
            )
        for module in frozen:
            module.requires_grad_(False)
        return frozen

    def train(self, mode: bool = True) -> TorchvisionCNNEncoder:
        super().train(mode)
        for module in self._frozen:  # frozen BatchNorm keeps its (pretrained) running statistics
            module.eval()
        return self

    def forward(self, images_BCHW: torch.Tensor) -> Tokens:
        return grid_to_tokens(self.body(images_BCHW))
