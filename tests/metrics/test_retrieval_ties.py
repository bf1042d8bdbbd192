"""Retrieval ranks with ties: one stable ranking (equal scores in table order) gives both Recall@K and the written
top lists, with or without re-ranking, and both equal a brute-force Python sort (which is stable)."""

import pytest
import torch

from cmvl.metrics.retrieval import RetrievalRecall
from cmvl.models.tokens import Tokens

NUM_IMAGES, CAPTIONS_PER_IMAGE, DEPTH = 30, 5, 10
NUM_TEXTS = NUM_IMAGES * CAPTIONS_PER_IMAGE


def tied_split(seed: int):
    """Integer-valued embeddings (every dot product exact, so any order of summation agrees): captions drawn from
    12 caption strings, one embedding each, so a repeated caption ties with all its copies; images come in pairs
    with the same embedding (the same picture twice)."""
    gen = torch.Generator().manual_seed(seed)
    strings = torch.randint(-2, 3, (12, 6), generator=gen).float()
    caption_string = torch.randint(0, 12, (NUM_TEXTS,), generator=gen)
    text_emb = strings[caption_string]
    image_emb = torch.randint(-2, 3, (NUM_IMAGES // 2, 6), generator=gen).float().repeat_interleave(2, dim=0)
    text_image = torch.arange(NUM_IMAGES).repeat_interleave(CAPTIONS_PER_IMAGE)
    return gen, image_emb, text_emb, text_image


def fed_metric(seed: int, rerank_k: int = 0) -> tuple[RetrievalRecall, tuple]:
    gen, image_emb, text_emb, text_image = data = tied_split(seed)
    metric = RetrievalRecall(rerank_k=rerank_k, depth=DEPTH)
    for chunk in torch.randperm(NUM_TEXTS, generator=gen).split(23):  # shuffled batches, images repeated
        keys = text_image[chunk]
        tokens = {}
        if rerank_k:  # tokens carry each row's index, so a test scorer can look pairs up
            tokens = {
                "image_tokens": Tokens(keys.float().view(-1, 1, 1), torch.ones(len(chunk), 1, dtype=torch.bool)),
                "text_tokens": Tokens(chunk.float().view(-1, 1, 1), torch.ones(len(chunk), 1, dtype=torch.bool)),
            }
        metric.update(image_emb[keys], keys, keys + 1000, text_emb[chunk], chunk, keys, chunk + 5000, **tokens)
    return metric, data


def stable_order(scores: list[float], head: list[float] | None = None, k: int = 0) -> list[int]:
    """Candidates best first, ties in table order (Python's sort is stable); with `head`, the first k re-sorted
    by it, ties in their embedding order."""
    order = sorted(range(len(scores)), key=lambda c: -scores[c])
    if head is not None:
        order = sorted(order[:k], key=lambda c: -head[c]) + order[k:]
    return order


def brute_force(image_emb, text_emb, text_image, match=None, k=0):
    sim = (text_emb @ image_emb.T).tolist()  # exact: integer products
    by_text = [stable_order(sim[t], None if match is None else match[:, t].tolist(), k) for t in range(NUM_TEXTS)]
    columns = [[row[i] for row in sim] for i in range(NUM_IMAGES)]
    by_image = [stable_order(columns[i], None if match is None else match[i].tolist(), k) for i in range(NUM_IMAGES)]
    t2i = [by_text[t].index(int(text_image[t])) for t in range(NUM_TEXTS)]
    i2t = [min(by_image[i].index(t) for t in range(i * CAPTIONS_PER_IMAGE, (i + 1) * CAPTIONS_PER_IMAGE))
           for i in range(NUM_IMAGES)]  # fmt: skip
    recalls = {}
    for r in (1, 5, 10):
        recalls[f"i2t_r{r}"] = sum(rank < r for rank in i2t) / NUM_IMAGES
        recalls[f"t2i_r{r}"] = sum(rank < r for rank in t2i) / NUM_TEXTS
    return recalls, by_text, by_image


def recalls_from_written_lists(records: dict[str, list[dict]]) -> dict[str, float]:
    """What a reader of the predictions file counts: a hit at K when a right id is among the first K written."""
    recalls = {}
    for r in (1, 5, 10):
        recalls[f"t2i_r{r}"] = sum(
            1000 + (rec["caption_id"] - 5000) // CAPTIONS_PER_IMAGE in rec["image_ids"][:r]
            for rec in records["text_to_image"]
        ) / len(records["text_to_image"])
        recalls[f"i2t_r{r}"] = sum(
            any((c - 5000) // CAPTIONS_PER_IMAGE == rec["image_id"] - 1000 for c in rec["caption_ids"][:r])
            for rec in records["image_to_text"]
        ) / len(records["image_to_text"])
    return recalls


def logged(computed: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in computed.items() if k not in ("r_mean", "itc_r_mean")}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_and_written_lists_come_from_one_stable_ranking(seed):
    metric, (_, image_emb, text_emb, text_image) = fed_metric(seed)
    computed = logged(metric.compute())
    records = metric.predictions()
    reference, by_text, by_image = brute_force(image_emb, text_emb, text_image)
    assert computed == pytest.approx(reference, abs=1e-6)
    assert recalls_from_written_lists(records) == pytest.approx(computed, abs=1e-6)
    assert [r["image_ids"] for r in records["text_to_image"]] == [[1000 + i for i in o[:DEPTH]] for o in by_text]
    assert [r["caption_ids"] for r in records["image_to_text"]] == [[5000 + t for t in o[:DEPTH]] for o in by_image]
    # The split is full of ties: counting a tie as a hit would give other recalls.
    sim = text_emb @ image_emb.T
    optimistic = (sim > sim[torch.arange(NUM_TEXTS), text_image][:, None]).sum(1)
    assert float((optimistic < 1).float().mean()) > computed["t2i_r1"]
    unscored, _ = fed_metric(seed)  # a split written without a score (no recall logged): the same ranking
    assert unscored.predictions() == records


@pytest.mark.parametrize("seed", [0, 3])
def test_reranked_recall_and_written_lists_come_from_one_stable_ranking(seed):
    k = 7
    metric, (gen, image_emb, text_emb, text_image) = fed_metric(seed, rerank_k=k)
    match = torch.randint(0, 3, (NUM_IMAGES, NUM_TEXTS), generator=gen).float()  # few values: many ties
    match[text_image, torch.arange(NUM_TEXTS)] += 1

    def row(tokens: Tokens) -> torch.Tensor:
        return tokens.feats[:, 0, 0].long()

    metric.pair_scorer = lambda images, texts: match[row(images), row(texts)]
    computed = logged(metric.compute())
    records = metric.predictions()
    reference, by_text, by_image = brute_force(image_emb, text_emb, text_image, match, k)
    assert computed == pytest.approx(reference, abs=1e-6)
    assert recalls_from_written_lists(records) == pytest.approx(computed, abs=1e-6)
    assert [r["image_ids"] for r in records["text_to_image"]] == [[1000 + i for i in o[:DEPTH]] for o in by_text]
    assert [r["caption_ids"] for r in records["image_to_text"]] == [[5000 + t for t in o[:DEPTH]] for o in by_image]
