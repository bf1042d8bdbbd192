"""cmvl serve backend=onnx resizes in NumPy to the pixels training's torchvision resize makes (cmvl/serve/resize.py):
equal pixel for pixel on random images, shrunk, enlarged, one axis kept, down to one pixel; Pillow's bilinear
filter, which the ONNX backend used before, is not (it is one grey level off on some pixels)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cmvl.data.images import build_transform
from cmvl.serve.resize import resize_like_training

# (height, width) in → side out: shrinking a lot and a little, enlarging, one axis already the size, tiny images.
SIZES = [((480, 640), 32), ((33, 31), 32), ((17, 90), 64), ((32, 200), 32), ((300, 32), 32), ((1, 1), 32),
         ((2, 500), 7), ((224, 225), 224), ((999, 13), 40)]  # fmt: skip


@pytest.mark.parametrize(("shape", "side"), SIZES)
def test_the_pixels_are_torchvisions(shape, side):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    noise = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(noise).resize(shape[::-1], Image.Resampling.BOX).rotate(7))
    for image in (noise, smooth):
        expected = build_transform(image_size=side, train=False)(Image.fromarray(image)).numpy()
        got = resize_like_training(image, side, side)
        assert got.dtype == np.uint8 and got.shape == (3, side, side)
        assert np.array_equal(got, expected), np.abs(got.astype(int) - expected).max()


def test_pillows_bilinear_filter_is_not_the_same_pixels():
    """What the test above guards against: the filter the ONNX backend used to resize with differs from training."""
    image = np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    expected = build_transform(image_size=32, train=False)(Image.fromarray(image)).numpy()
    pillow = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert not np.array_equal(pillow, expected)
    assert np.array_equal(resize_like_training(image, 32, 32), expected)
