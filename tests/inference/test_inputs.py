"""A user's images and texts reach a restored run's model exactly as its evaluation data does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cmvl
from cmvl.data.datamodule import tokenize_queries
from cmvl.data.images import build_transform, decode_image
from cmvl.errors import DataError
from cmvl.inference.inputs import known_token_count, open_input_image, run_images, run_texts


@pytest.fixture(scope="module")
def run(finished_tiny_run):
    return cmvl.load_run(finished_tiny_run / "checkpoints" / "last.ckpt")


def test_a_file_and_the_same_image_in_memory_give_the_evaluation_pixels(run, tiny_world, tmp_path):
    path = sorted(tiny_world.glob("val*/*.jpg"))[0]
    rotated = Image.open(path).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": undoes the ROTATE_90 (counter-clockwise) above
    rotated_file = tmp_path / "rotated.png"
    rotated.save(rotated_file, exif=exif)
    size = int(run.config.data.image.size)
    expected = build_transform(image_size=size, train=False)(decode_image(path, name=str(path)))
    pixels = run_images(run, [path, Image.open(path)])
    assert pixels.shape == (2, 3, size, size) and pixels.dtype == torch.uint8
    assert torch.equal(pixels[0], expected) and torch.equal(pixels[1], expected)
    assert torch.equal(run_images(run, [rotated_file])[0], expected)  # EXIF orientation applied
    assert not torch.equal(run_images(run, [Image.open(path).transpose(Image.Transpose.ROTATE_90)])[0], expected)


def test_texts_are_tokenised_as_evaluation_batches_are(run):
    texts = ["what color is the circle?", "how many squares are there?"]
    ids, mask = run_texts(run, texts)
    expected = tokenize_queries(run.tokenizer, texts, int(run.config.text.max_length))
    assert torch.equal(ids, expected.input_ids) and torch.equal(mask, expected.attention_mask)
    assert known_token_count(run, "circle") > 0
    assert known_token_count(run, "qqxzv ##") == 0 or run.tokenizer.unk_token_id is None


def test_missing_unreadable_and_folder_images_are_one_line(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    for image, needle in [(tmp_path / "nope.png", "image not found"), (bad, "unreadable image"), (tmp_path, "folder")]:
        with pytest.raises(DataError, match=needle):
            open_input_image(image)
    with pytest.raises(TypeError):
        open_input_image(np.zeros((4, 4)))
