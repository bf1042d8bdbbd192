"""Image-grouped training order and per-batch image deduplication: every row once per epoch, an image's rows
together, the order a pure function of (seed, epoch), DDP slices equal and disjoint; a deduplicated batch gives
exactly what the row-by-row batch gives."""

from __future__ import annotations

import numpy as np
import torch

from cmvl.data.datamodule import Collator
from cmvl.data.sampling import ImageGroupedSampler, ShardSampler
from cmvl.data.text import TokenizedTexts
from cmvl.models.fusion.attention import CrossAttentionFusion
from cmvl.models.text.bert import TinyBertEncoder
from cmvl.models.vision.tiny_cnn import TinyCNNEncoder
from cmvl.models.vl_model import VisionLanguageModel

# 7 images with 1..5 rows each, rows of one image not adjacent in the table.
IMAGE_IDS = np.array([0, 1, 2, 0, 3, 1, 4, 5, 6, 0, 2, 5, 5, 5, 3, 0, 6, 1, 2, 0, 4, 4])


class _Rows:
    def __len__(self) -> int:
        return len(IMAGE_IDS)


def _sampler(seed: int = 0) -> ImageGroupedSampler:
    return ImageGroupedSampler(_Rows(), IMAGE_IDS, seed=seed)


def _runs(order: list[int]) -> list[int]:
    """The image ids of `order`, one entry per run of consecutive equal ids."""
    ids = IMAGE_IDS[order]
    return [int(i) for k, i in enumerate(ids) if k == 0 or ids[k - 1] != i]


def test_each_epoch_visits_every_row_once_with_an_images_rows_together():
    sampler = _sampler()
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(IMAGE_IDS)))
        runs = _runs(order)
        assert len(runs) == len(set(runs)) == 7  # one run per image
        for image in set(runs):  # rows of an image keep table order
            rows = [r for r in order if IMAGE_IDS[r] == image]
            assert rows == sorted(rows)
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]
    again = _sampler()
    again.set_epoch(1)
    assert list(again) == orders[1]
    other_seed = _sampler(seed=1)
    other_seed.set_epoch(1)
    assert list(other_seed) != orders[1]


def test_resume_from_state_continues_the_same_epoch_order():
    sampler = _sampler()
    sampler.set_epoch(2)
    full = list(sampler)
    it = iter(sampler)
    seen = [next(it) for _ in range(9)]
    state = sampler.state_dict()
    restored = _sampler()  # a fresh process: epoch 0 until the state says otherwise
    restored.load_state_dict(state)
    assert seen + list(restored) == full
    assert list(restored) == full  # the next pass is a whole epoch again


def test_saved_position_does_not_carry_into_the_next_epoch():
    """A checkpoint at an epoch's last batch: Lightning sets the next epoch after loading the state."""
    sampler = _sampler()
    sampler.set_epoch(0)
    list(sampler)
    restored = _sampler()
    restored.load_state_dict(sampler.state_dict())
    restored.set_epoch(1)
    reference = _sampler()
    reference.set_epoch(1)
    assert list(restored) == list(reference)


def test_row_shuffle_and_loader_generator_are_functions_of_seed_and_epoch():
    rows = ImageGroupedSampler(_Rows(), np.arange(len(IMAGE_IDS)), seed=0)
    rows.set_epoch(3)
    order, draw = list(rows), torch.randint(0, 2**62, (1,), generator=rows.loader_generator).item()
    assert sorted(order) == list(range(len(IMAGE_IDS))) and order != sorted(order)
    global_state = torch.get_rng_state()
    again = ImageGroupedSampler(_Rows(), np.arange(len(IMAGE_IDS)), seed=0)
    again.load_state_dict({"epoch": 3, "yielded": 0})
    assert list(again) == order
    assert torch.randint(0, 2**62, (1,), generator=again.loader_generator).item() == draw
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is never touched


def _as_rank(monkeypatch, world: int, rank: int) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)


def test_ddp_ranks_split_each_global_batch_of_the_one_process_order(monkeypatch):
    single = ImageGroupedSampler(_Rows(), IMAGE_IDS, seed=0, batch_size=6)
    single.set_epoch(4)
    one_process = list(single)
    assert len(one_process) == 18  # 3 full batches of 6; the other 4 rows wait for another epoch's order
    shares = []
    for rank in range(3):
        _as_rank(monkeypatch, 3, rank)
        sampler = ImageGroupedSampler(_Rows(), IMAGE_IDS, seed=0, batch_size=2)
        sampler.set_epoch(4)
        shares.append(list(sampler))
    assert [len(s) for s in shares] == [6, 6, 6]  # same number of steps on every rank
    for step in range(3):  # global batch k on 3 ranks of batch 2 = batch k of one process of batch 6
        assert [r for share in shares for r in share[2 * step : 2 * step + 2]] == one_process[6 * step : 6 * step + 6]


def test_evaluation_shards_cover_every_row_once_in_order(monkeypatch):
    for world in (1, 2, 3, 5):
        shards = []
        for rank in range(world):
            _as_rank(monkeypatch, world, rank)
            shards.append(list(ShardSampler(_Rows())))
        assert [r for shard in shards for r in shard] == list(range(len(IMAGE_IDS)))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def _model() -> VisionLanguageModel:
    torch.manual_seed(0)

    class Tok:
        pad_token_id = 0

        def __len__(self) -> int:
            return 50

    return VisionLanguageModel(
        vision=TinyCNNEncoder(channels=16, stem_stride=4, downsample=1),
        text=TinyBertEncoder(
            tokenizer=Tok(), hidden_size=32, layers=1, heads=2, intermediate_size=64, max_length=8, dropout=0.0
        ),
        fusion=CrossAttentionFusion(dim=32, layers=1, heads=2, dropout=0.0),
        heads={},
        dim=32,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
    ).eval()


def test_a_deduplicated_batch_equals_the_row_by_row_batch():
    class Targets:
        def collate(self, indices):
            return {}

    class Tokenizer:
        pad_token_id, padding_side = 0, "right"

        def __call__(self, texts, **kwargs):
            return {"input_ids": [[1 + len(t) % 7, 2 + i % 5, 3][: 1 + i % 3] for i, t in enumerate(texts)]}

    gen = torch.Generator().manual_seed(0)
    pixels = {k: torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen) for k in (7, 3, 9)}
    image_ids = [7, 7, 3, 9, 3, 7]
    texts = [f"question {i} " * (i + 1) for i in range(len(image_ids))]
    tokens = TokenizedTexts(Tokenizer(), texts, 8)
    samples = [
        {"image": pixels[k], "text": texts[i], "input_ids": tokens.row(i), "index": i, "image_id": k}
        for i, k in enumerate(image_ids)
    ]
    batch = Collator(tokens, Targets(), "vqa")(samples)
    assert batch["attention_mask"].sum(1).tolist() == [1, 2, 3, 1, 2, 3]
    assert batch["images"].shape[0] == 3
    assert batch["image_index"].tolist() == [0, 0, 1, 2, 1, 0]
    model = _model()
    with torch.no_grad():
        grouped = model(batch["images"], batch["input_ids"], batch["attention_mask"], batch["image_index"])
        rows = torch.stack([pixels[k] for k in image_ids])
        plain = model(rows, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(grouped.pooled, plain.pooled)
    torch.testing.assert_close(grouped.tokens.feats, plain.tokens.feats)
