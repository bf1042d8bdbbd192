"""Image-grouped training order and per-batch image deduplication: every row once per epoch, an image's rows
together, the order a pure function of (seed, epoch), DDP slices equal and disjoint; a deduplicated batch gives
exactly what the row-by-row batch gives."""

from __future__ import annotations

import numpy as np
import torch

from cmvl.data.datamodule import Collator, Sample
from cmvl.data.sampling import ImageGroupedSampler, ShardSampler
from cmvl.data.text import TokenizedTexts
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.fusion.attention import CrossAttentionFusion
from cmvl.models.text.bert import TinyBertEncoder
from cmvl.models.vision.tiny_cnn import TinyCNNEncoder

# 7 images with 1..5 rows each, rows of one image not adjacent in the table.
IMAGE_IDS = np.array([0, 1, 2, 0, 3, 1, 4, 5, 6, 0, 2, 5, 5, 5, 3, 0, 6, 1, 2, 0, 4, 4])


class _Rows:
    def __init__(self, rows: int = len(IMAGE_IDS)) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows


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
            return None

    class Tokenizer:
        pad_token_id, padding_side = 0, "right"

        def __call__(self, texts, **kwargs):
            return {"input_ids": [[1 + len(t) % 7, 2 + i % 5, 3][: 1 + i % 3] for i, t in enumerate(texts)]}

    gen = torch.Generator().manual_seed(0)
    pixels = {k: torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen) for k in (7, 3, 9)}
    image_ids = [7, 7, 3, 9, 3, 7]
    texts = [f"question {i} " * (i + 1) for i in range(len(image_ids))]
    tokens = TokenizedTexts(Tokenizer(), texts, 8)
    samples = [Sample(pixels[k], texts[i], tokens.row(i), i, k) for i, k in enumerate(image_ids)]
    batch = Collator(tokens, Targets(), "vqa")(samples)
    assert batch.attention_mask.sum(1).tolist() == [1, 2, 3, 1, 2, 3]
    assert batch.images.shape[0] == 3 and batch.image_key.tolist() == [7, 3, 9]
    assert batch.image_index.tolist() == [0, 0, 1, 2, 1, 0]
    assert len(batch) == 6 and batch.texts == texts and batch.index.tolist() == list(range(6))
    model = _model()
    with torch.no_grad():
        grouped = model(batch.images, batch.input_ids, batch.attention_mask, batch.image_index)
        rows = torch.stack([pixels[k] for k in image_ids])
        plain = model(rows, batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(grouped.pooled, plain.pooled)
    torch.testing.assert_close(grouped.tokens.feats, plain.tokens.feats)


# data.max_rows_per_image: rows of one image in a batch are capped; the shapes default (5 per image) is unchanged.


def _layout(rows_per_image: np.ndarray, seed: int = 1) -> np.ndarray:
    """Image ids of a table whose image k has rows_per_image[k] rows, in a shuffled table order."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(rows_per_image)), rows_per_image))


def _batches(ids: np.ndarray, order: list[int], batch: int) -> list[np.ndarray]:
    return [ids[order[k : k + batch]] for k in range(0, len(order) - batch + 1, batch)]


def test_the_shapes_default_gives_the_batches_it_gave_before_the_cap():
    """5 questions per image, rows of an image together in the table: the order the sampler gave before
    `max_rows_per_image` existed (digest of the whole epoch, measured with that version for seed 0)."""
    import hashlib

    ids = np.repeat(np.arange(4000), 5)
    expected = {(32, 0): "c220508d2bf1494f", (32, 1): "8c5944511cd2c409", (7, 0): "6b88b503c3197627"}
    for (batch, epoch), digest in expected.items():
        sampler = ImageGroupedSampler(_Rows(len(ids)), ids, seed=0, batch_size=batch, max_rows_per_image=8)
        sampler.set_epoch(epoch)
        order = np.asarray(list(sampler), dtype=np.int64)
        assert hashlib.sha256(order.tobytes()).hexdigest()[:16] == digest


def test_the_capped_walk_is_the_plain_order_when_no_image_exceeds_the_cap():
    """The batch-by-batch walk itself (not only the shortcut taken when the cap cannot bind), for batches larger
    and smaller than an image's rows."""
    from cmvl.data.sampling import _cap_rows_per_batch

    sizes = np.random.default_rng(0).integers(1, 6, 200)
    starts = np.r_[0, np.cumsum(sizes)]
    images = [np.arange(starts[k], starts[k + 1]) for k in np.random.default_rng(1).permutation(len(sizes))]
    for batch_rows in (1, 3, 7, 32):
        capped = np.concatenate(_cap_rows_per_batch(images, batch_rows=batch_rows, cap=5))
        assert np.array_equal(capped, np.concatenate(images))


def test_an_image_puts_at_most_the_cap_in_a_batch_and_no_row_is_dropped():
    for sizes in (np.full(300, 20), np.random.default_rng(2).integers(1, 40, 600)):  # Sort-of-CLEVR, VG-like
        ids = _layout(sizes)
        sampler = ImageGroupedSampler(_Rows(len(ids)), ids, seed=0, batch_size=32, max_rows_per_image=8)
        uncapped = ImageGroupedSampler(_Rows(len(ids)), ids, seed=0, batch_size=32)
        for epoch in (0, 1):
            order = sampler.order(epoch).tolist()
            assert sorted(order) == list(range(len(ids)))  # every row once in the epoch's order
            by_image = np.asarray(order)[np.argsort(ids[order], kind="stable")]  # each image's rows, in epoch order
            assert np.all((np.diff(by_image) > 0) | (np.diff(ids[by_image]) != 0))  # an image's rows in table order
            sampler.set_epoch(epoch)
            served = list(sampler)
            assert len(served) == len(ids) // 32 * 32  # as many steps as without the cap
            most = [np.bincount(b).max() for b in _batches(ids, served, 32)]
            assert max(most[:-1]) <= 8  # only the epoch's last batch may hold more (too few images left)
            assert min(len(set(b)) for b in _batches(ids, served, 32)[:-1]) >= 4
        assert max(np.bincount(b).max() for b in _batches(ids, list(uncapped), 32)) > 8  # the cap is what acts


def test_the_cap_is_on_the_global_batch_so_ddp_ranks_split_the_one_process_batches(monkeypatch):
    ids = _layout(np.full(60, 20))
    single = ImageGroupedSampler(_Rows(len(ids)), ids, seed=0, batch_size=32, max_rows_per_image=8)
    single.set_epoch(3)
    one_process = list(single)
    shares = []
    for rank in range(4):
        _as_rank(monkeypatch, 4, rank)
        sampler = ImageGroupedSampler(_Rows(len(ids)), ids, seed=0, batch_size=8, max_rows_per_image=8)
        sampler.set_epoch(3)
        shares.append(list(sampler))
    assert len({len(s) for s in shares}) == 1
    steps = len(shares[0]) // 8
    assert steps == len(one_process) // 32
    for step in range(steps):
        assert [r for s in shares for r in s[8 * step : 8 * step + 8]] == one_process[32 * step : 32 * step + 32]


def test_a_capped_order_resumes_mid_epoch():
    ids = _layout(np.full(40, 16))
    sampler = ImageGroupedSampler(_Rows(len(ids)), ids, seed=0, batch_size=16, max_rows_per_image=8)
    sampler.set_epoch(2)
    full = list(sampler)
    it = iter(sampler)
    seen = [next(it) for _ in range(100)]
    restored = ImageGroupedSampler(_Rows(len(ids)), ids, seed=0, batch_size=16, max_rows_per_image=8)
    restored.load_state_dict(sampler.state_dict())
    assert seen + list(restored) == full


def test_training_says_in_one_line_when_the_cap_acts(tmp_path, capsys):
    from cmvl.config.compose import compose_config
    from cmvl.log import configure
    from cmvl.training.build import build_datamodule
    from tests.conftest import TINY_WORLD

    configure()  # as the CLI does: the notice is a cmvl logger line (else set up by whichever test ran first)

    def notices(*overrides: str) -> list[str]:
        cfg = compose_config([*TINY_WORLD, "data.batch_size=16", *overrides])
        datamodule = build_datamodule(cfg)
        datamodule.prepare()
        capsys.readouterr()
        datamodule.train_dataloader()
        return [line for line in capsys.readouterr().err.splitlines() if "max_rows_per_image" in line]

    many = ("dataset.questions_per_image=20", f"dataset.root={tmp_path / 'many'}")
    (line,) = notices(*many)
    assert line.startswith("cmvl: the vqa train split has ") and "data.max_rows_per_image=8" in line
    assert notices(*many, "data.max_rows_per_image=20") == []
    assert notices(f"dataset.root={tmp_path / 'five'}") == []  # 5 per image: nothing changes, nothing said
