"""A torchvision ViT at another size (random init): the named architecture (patch size, CLS token) narrowed or
shortened, for tests and quick trials; torchvision's weights only at the named size."""

from __future__ import annotations

import pytest
import torch

from cmvl.errors import ConfigError
from cmvl.models.vision.pretrained_vision import TorchvisionViTEncoder


def test_a_narrow_vit_keeps_the_named_models_patch_grid():
    encoder = TorchvisionViTEncoder(name="vit_b_16", layers=2, width=48, heads=3, mlp_width=96, image_size=64)
    tokens = encoder(torch.zeros(2, 3, 64, 64))
    assert tokens.feats.shape == (2, 1 + 4 * 4, 48) and encoder.out_dim == 48
    assert len(encoder.net.encoder.layers) == 2 and encoder.net.encoder.layers[0].self_attention.num_heads == 3
    assert encoder.net.patch_size == 16


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"pretrained": "torchvision", "layers": 2}, "weights for vit_b_16 do not fit"),
        ({"width": 50, "heads": 3}, "not divisible"),
        ({"layers": 0}, "positive integer"),
    ],
)
def test_sizes_that_cannot_be_built_are_one_line(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        TorchvisionViTEncoder(name="vit_b_16", image_size=64, **kwargs)
