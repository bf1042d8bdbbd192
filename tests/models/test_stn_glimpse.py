"""`fusion=stn_glimpse`: the glimpse starts as the identity (the whole grid, exactly), a predicted scale + shift
crops exactly the cells it covers, the box stays bounded and is exposed in image fractions, and the localiser
learns from the first step (its gradient is not zero at the identity)."""

from __future__ import annotations

import math

import pytest
import torch

from cmvl.config.compose import compose_config
from cmvl.config.instantiate import instantiate
from cmvl.errors import ConfigError
from cmvl.models.fusion.stn_glimpse import SpatialTransformerGlimpseFusion
from cmvl.models.tokens import Tokens

DIM = 16


def _inputs(height: int = 4, width: int = 4) -> tuple[Tokens, Tokens]:
    torch.manual_seed(0)
    prefix = torch.randn(2, 1, DIM)  # a [CLS]-like token before the grid: not part of any glimpse
    grid = torch.randn(2, height * width, DIM)
    vision = Tokens(
        torch.cat([prefix, grid], dim=1), torch.ones(2, 1 + height * width, dtype=torch.bool), (height, width)
    )
    text = Tokens(torch.randn(2, 5, DIM), torch.ones(2, 5, dtype=torch.bool))
    return vision, text


def _fusion(**kwargs) -> SpatialTransformerGlimpseFusion:
    torch.manual_seed(0)
    return SpatialTransformerGlimpseFusion(dim=DIM, layers=1, heads=2, dropout=0.0, **kwargs).eval()


def test_the_glimpse_starts_as_the_whole_grid():
    fusion, (vision, text) = _fusion(glimpse_size=4), _inputs()
    scale, shift = fusion.transforms(text)
    assert torch.equal(scale, torch.ones(2, 1, 2)) and torch.equal(shift, torch.zeros(2, 1, 2))
    glimpse = fusion.glimpse_tokens(vision, scale, shift)
    torch.testing.assert_close(glimpse.feats, vision.feats[:, 1:], atol=1e-6, rtol=1e-6)
    out = fusion(vision, text)
    assert torch.equal(fusion.glimpse_boxes(), torch.tensor([[[0.0, 0.0, 1.0, 1.0]]] * 2))
    assert out.tokens.feats.shape == (2, 5 + 16 + 17, DIM) and out.tokens.grid == (4, 4)  # the grid is still last


def test_a_predicted_scale_and_shift_crop_exactly_the_cells_they_cover():
    fusion, (vision, text) = _fusion(glimpse_size=2, glimpses=2, min_scale=0.25), _inputs()
    # scale 1 + 0.75·tanh(r) = 0.5 and shift 0.75·tanh(r) = ∓0.5: glimpse 0 the top-left quarter, 1 the bottom-right.
    r = math.atanh(-2 / 3)
    with torch.no_grad():
        fusion.localise[-1].bias.copy_(torch.tensor([r, r, r, r, r, r, -r, -r]))
    fusion(vision, text)
    boxes = fusion.glimpse_boxes()
    torch.testing.assert_close(boxes[0], torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]))
    scale, shift = fusion.transforms(text)
    glimpses = fusion.glimpse_tokens(vision, scale, shift).feats.view(2, 2, 4, DIM) - fusion.glimpse_embed[:, None]
    cells = vision.feats[:, 1:].view(2, 4, 4, DIM)
    torch.testing.assert_close(glimpses[:, 0], cells[:, :2, :2].reshape(2, 4, DIM), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(glimpses[:, 1], cells[:, 2:, 2:].reshape(2, 4, DIM), atol=1e-6, rtol=1e-6)


def test_the_box_is_bounded_and_the_localiser_learns_from_the_identity():
    fusion, (vision, text) = _fusion(min_scale=0.3), _inputs()
    with torch.no_grad():
        fusion.localise[-1].bias.copy_(torch.tensor([-50.0, -50.0, 50.0, -50.0]))
    scale, shift = fusion.transforms(text)
    assert (scale >= 0.3 - 1e-6).all() and (shift.abs() <= 0.7 + 1e-6).all()
    fusion(vision, text)
    assert ((fusion.glimpse_boxes() >= 0) & (fusion.glimpse_boxes() <= 1)).all()
    fresh = _fusion().train()
    fresh(vision, text).pooled.square().sum().backward()
    assert fresh.localise[-1].weight.grad.abs().sum() > 0  # the crop moves with the question from step one
    assert fresh.localise[-1].bias.grad[:2].abs().sum() > 0  # the scale too (not a stationary point)


def test_tokens_without_a_grid_are_one_line_and_the_yaml_builds_it():
    fusion, (vision, text) = _fusion(), _inputs()
    with pytest.raises(ConfigError, match="fusion=stn_glimpse needs vision tokens with a spatial grid"):
        fusion(Tokens(vision.feats, vision.mask), text)
    with pytest.raises(ConfigError, match="fusion.min_scale=1"):
        SpatialTransformerGlimpseFusion(dim=DIM, min_scale=1)
    built = instantiate(compose_config(["fusion=stn_glimpse", "model.dim=16", "fusion.heads=2"]).fusion)
    assert isinstance(built, SpatialTransformerGlimpseFusion) and built.glimpse_size == 4
