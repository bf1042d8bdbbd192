"""Every image mode Pillow opens decodes to the right 8-bit RGB (alpha over white, 16 bits ÷ 257, EXIF orientation)
or is refused as an unreadable image, as are decompression bombs: training skips them, evaluation refuses them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cmvl.data.images import decode_image, load_image
from cmvl.errors import DataError
from tests.data.test_bad_images import _dataset as bad_images_dataset

WHITE, RED = (255, 255, 255), (255, 0, 0)


def _palette(transparent: bool) -> Image.Image:
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    im.putpixel((1, 0), 1)
    if transparent:
        im.info["transparency"] = 1  # written as the PNG tRNS chunk: index 1 is see-through
    return im


def _sixteen_bit(mode: str) -> Image.Image:
    grey = np.array([[0, 128 * 257, 65535]], dtype=np.uint16)
    order = ">" if mode == "I;16B" else "<"
    return Image.frombytes(mode, (3, 1), grey.astype(f"{order}u2").tobytes())


# (what, image, file format, the RGB pixels expected, left to right)
CASES = [
    ("1", Image.frombytes("1", (2, 1), bytes([0b01000000])), "PNG", [(0, 0, 0), WHITE]),
    ("L", Image.frombytes("L", (2, 1), bytes([30, 200])), "PNG", [(30,) * 3, (200,) * 3]),
    ("P", _palette(transparent=False), "PNG", [RED, (0, 0, 255)]),
    ("P transparent", _palette(transparent=True), "PNG", [RED, WHITE]),
    ("LA", Image.frombytes("LA", (3, 1), bytes([30, 255, 30, 0, 0, 128])), "PNG", [(30,) * 3, WHITE, (127,) * 3]),
    ("RGBA", Image.frombytes("RGBA", (2, 1), bytes([255, 0, 0, 255, 0, 0, 255, 0])), "PNG", [RED, WHITE]),
    ("CMYK", Image.frombytes("CMYK", (2, 1), bytes([0, 255, 255, 0, 0, 0, 0, 255])), "TIFF", [RED, (0, 0, 0)]),
    ("I;16", _sixteen_bit("I;16"), "PNG", [(0,) * 3, (128,) * 3, WHITE]),
    ("I;16B", _sixteen_bit("I;16B"), "TIFF", [(0,) * 3, (128,) * 3, WHITE]),
]


@pytest.mark.parametrize(("what", "image", "fmt", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_mode_decodes_to_its_rgb_pixels(tmp_path, what, image, fmt, expected):
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, format=fmt)
    with Image.open(path) as opened:
        assert opened.mode == image.mode  # the file really holds that mode
    decoded = load_image(path)
    assert decoded.mode == "RGB"
    assert [tuple(p) for p in np.asarray(decoded)[0]] == expected


@pytest.mark.parametrize(("mode", "fmt"), [("I", "TIFF"), ("F", "TIFF")])
def test_modes_without_a_defined_range_are_unreadable_images(tmp_path, mode, fmt):
    path = tmp_path / "image.tiff"
    Image.new(mode, (2, 2), 1000).save(path, format=fmt)
    with pytest.raises(DataError, match=rf"unreadable image: .*image.tiff \(mode {mode}: .* no defined 0-255 range"):
        load_image(path)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (4, 2), RED)
    image.putpixel((0, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; display rotated 90° clockwise
    path = tmp_path / "turned.png"
    image.save(path, exif=exif)
    decoded = np.asarray(load_image(path))
    assert decoded.shape == (4, 2, 3)  # upright: 2 wide, 4 high
    assert tuple(decoded[0, 1]) == (0, 0, 255)  # the top-left pixel went to the top-right


@pytest.fixture()
def bomb_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # above 100 pixels: a warning; above 200: an error


@pytest.mark.parametrize("side", [12, 16], ids=["past the warning limit", "past the error limit"])
def test_a_decompression_bomb_is_an_unreadable_image(tmp_path, bomb_limit, side):
    path = tmp_path / "bomb.png"
    Image.new("L", (side, side)).save(path)
    with pytest.raises(DataError, match=r"unreadable image: .*bomb.png \(Image size \(\d+ pixels\) exceeds limit"):
        load_image(path)
    with pytest.raises(DataError, match="unreadable image: in memory"):
        decode_image(io.BytesIO(path.read_bytes()), name="in memory")


def test_training_skips_bombs_and_unranged_modes_like_any_unreadable_image(tmp_path, bomb_limit, capfd):
    Image.new("RGB", (8, 8), RED).save(tmp_path / "a.jpg")
    Image.new("L", (16, 16)).save(tmp_path / "b.jpg", format="PNG")  # Pillow reads the content, not the name
    Image.new("F", (4, 4)).save(tmp_path / "c.jpg", format="TIFF")
    samples = bad_images_dataset(tmp_path, max_bad_fraction=0.9).__getitems__([2, 4])  # rows of b.jpg and c.jpg
    assert [s.index for s in samples] == [0, 0]  # both replaced by the next readable row (a.jpg, wrapped)
    err = capfd.readouterr().err
    assert "skipped unreadable image:" in err and "b.jpg (Image size" in err and "c.jpg (mode F" in err
    with pytest.raises(DataError, match=r"unreadable image: .*b.jpg \(Image size"):
        bad_images_dataset(tmp_path, max_bad_fraction=None).__getitems__([2])
