"""`task.loss=triplet`: the VSE++ hinge against a brute-force reference over every pair, positives (same image,
same caption text) never negatives, the sum-of-violations warm-up clock, and a tiny retrieval training with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmvl.errors import ConfigError
from cmvl.tasks.retrieval import RetrievalTargetsBatch, RetrievalTask
from cmvl.tasks.retrieval_losses import hinge_triplet, positive_pairs, text_keys
from tests.batch_helpers import batch_of


def brute_force_vse(similarity, image_of, text_of, margin, hardest):
    """VSE++ written as loops: for every true pair (caption i, its image), every other caption j whose image is not
    caption i's and whose text differs from caption i's gives a negative image (j's) and a negative caption (j)."""
    n = len(image_of)
    total = 0.0
    for i in range(n):
        images, captions = [], []
        for j in range(n):
            if image_of[j] == image_of[i] or text_of[j] == text_of[i]:
                continue  # a positive: the same image, or the same words
            images.append(max(0.0, margin - similarity[i][i] + similarity[i][j]))
            captions.append(max(0.0, margin - similarity[i][i] + similarity[j][i]))
        if hardest:
            total += max(images, default=0.0) + max(captions, default=0.0)
        else:
            total += sum(images) + sum(captions)
    return total / n


def tokenised(texts, *, left=False, length=6):
    """Texts as token ids (one id per word), padded right (or left) to `length`."""
    vocab = {w: i + 5 for i, w in enumerate(sorted({w for t in texts for w in t.split()}))}
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for r, t in enumerate(texts):
        words = [vocab[w] for w in t.split()]
        cols = slice(length - len(words), length) if left else slice(0, len(words))
        ids[r, cols], mask[r, cols] = torch.tensor(words), 1
    return ids, mask


TEXTS = ["a red circle", "a blue square", "a red circle", "two shapes", "a blue square left", "a red circle", "x"]
IMAGES = [0, 1, 2, 3, 1, 4, 5]  # rows 1 and 4: one image; rows 0, 2, 5: three images, one caption


@pytest.mark.parametrize("hardest", [True, False])
def test_hinge_matches_brute_force_and_skips_positives(hardest):
    torch.manual_seed(0)
    emb_t = F.normalize(torch.randn(len(TEXTS), 8), dim=-1)
    emb_i = F.normalize(torch.randn(len(TEXTS), 8), dim=-1)
    similarity = emb_t @ emb_i.T
    ids, mask = tokenised(TEXTS)
    positive = positive_pairs(torch.tensor(IMAGES), text_keys(ids, mask))
    ours = hinge_triplet(similarity, positive, margin=0.2, hardest=hardest)
    reference = brute_force_vse(similarity.tolist(), IMAGES, TEXTS, 0.2, hardest)
    assert ours.item() == pytest.approx(reference, rel=1e-5)
    # On the device, as training chooses it: the same value.
    assert hinge_triplet(similarity, positive, margin=0.2, hardest=torch.tensor(hardest)).item() == pytest.approx(
        reference, rel=1e-5
    )
    # Treating identical captions of other images as negatives would give a different (larger) loss here.
    same_image_only = positive_pairs(torch.tensor(IMAGES), torch.arange(len(TEXTS)))
    assert hinge_triplet(similarity, same_image_only, margin=0.2, hardest=hardest).item() > ours.item() + 1e-4


def test_text_keys_ignore_padding_and_tell_texts_apart():
    right, right_mask = tokenised(TEXTS)
    left, left_mask = tokenised(TEXTS, left=True, length=9)
    keys = text_keys(right, right_mask)
    assert torch.equal(keys, text_keys(left, left_mask))  # same words, other padding: same key
    same = keys[:, None] == keys[None, :]
    expected = torch.tensor([[a == b for b in TEXTS] for a in TEXTS])
    assert torch.equal(same, expected)


def test_warm_up_sums_violations_for_the_first_steps_then_takes_the_hardest(tiny_batch_model):
    model, batch = tiny_batch_model
    task = RetrievalTask(embed_dim=16, loss="triplet", margin=0.2, triplet_warmup_steps=2)
    model.heads["retrieval"] = task.build_head(32)
    chosen = []
    for _ in range(3):
        outputs = task.forward(model, batch)
        chosen.append(bool(outputs.hardest))
        summed = hinge_triplet(*_similarity_and_positives(outputs, batch), margin=0.2, hardest=False)
        hardest = hinge_triplet(*_similarity_and_positives(outputs, batch), margin=0.2, hardest=True)
        assert task.loss(outputs, batch).item() == pytest.approx((hardest if chosen[-1] else summed).item())
    assert chosen == [False, False, True]
    assert int(model.heads["retrieval"].state_dict()["train_steps"]) == 3  # checkpointed with the weights
    assert not model.heads["retrieval"].log_scale.requires_grad  # no temperature in the hinge


def _similarity_and_positives(outputs, batch):
    rows = outputs.image_emb[batch.image_index]
    keys = batch.image_key[batch.image_index]
    return outputs.text_emb @ rows.T, positive_pairs(keys, text_keys(batch.input_ids, batch.attention_mask))


def test_bad_triplet_settings_are_one_line():
    with pytest.raises(ConfigError, match="task.loss=hinge: choose one of infonce, triplet"):
        RetrievalTask(loss="hinge")
    with pytest.raises(ConfigError, match="task.margin=0"):
        RetrievalTask(loss="triplet", margin=0)


def test_the_config_keys_reach_the_task_and_bad_values_are_one_line():
    from cmvl.config.compose import compose_config
    from cmvl.config.instantiate import build_task
    from cmvl.config.rules import check_values

    cfg = compose_config(["task=retrieval", "task.loss=triplet", "task.margin=0.1", "task.triplet_warmup_steps=7"])
    check_values(cfg)
    task = build_task(cfg)
    assert (task.loss_kind, task.margin, task.triplet_warmup_steps) == ("triplet", 0.1, 7)
    assert compose_config(["task=retrieval"]).task.loss == "infonce"  # the default is unchanged
    with pytest.raises(ConfigError, match=r"^task.triplet_warmup_steps=-1: must be an integer >= 0$"):
        check_values(compose_config(["task=retrieval", "task.triplet_warmup_steps=-1"]))


class StandInModel(torch.nn.Module):
    """What the retrieval task reads of a model (its heads, image and text tokens), from two tiny layers."""

    def __init__(self) -> None:
        super().__init__()
        self.pixels = torch.nn.Linear(3, 32)
        self.words = torch.nn.Embedding(50, 32)
        self.heads = torch.nn.ModuleDict()

    def encode_images(self, images):
        from cmvl.models.tokens import Tokens

        feats = self.pixels(images.float().flatten(2).transpose(1, 2) / 255)
        return Tokens(feats, torch.ones(feats.shape[:2], dtype=torch.bool))

    def encode_texts(self, input_ids, attention_mask):
        from cmvl.models.tokens import Tokens

        return Tokens(self.words(input_ids), attention_mask.bool())


@pytest.fixture
def tiny_batch_model():
    """A stand-in model and a batch of 6 captions of 4 images (two captions of different images read the same)."""

    texts = ["a red circle", "a blue square", "a red circle", "two shapes", "a blue square left", "x"]
    ids, mask = tokenised(texts)
    rows = torch.arange(6)
    batch = batch_of(RetrievalTargetsBatch(rows, rows), 6, task="retrieval", texts=texts)
    torch.manual_seed(0)
    batch.images = torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8)
    batch.image_index, batch.image_key = torch.tensor([0, 1, 2, 3, 1, 0]), torch.arange(4) + 10
    batch.input_ids, batch.attention_mask = ids, mask
    return StandInModel(), batch
