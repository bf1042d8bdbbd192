"""`RetrievalRecall`: image→text and text→image Recall@K with many captions per image (the COCO/Flickr protocol),
optionally after re-ranking each query's top k with an image-text matching model."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist
from torchmetrics import Metric

from cmvl.models.tokens import Tokens

SORT_ELEMENTS = 1 << 24  # similarities sorted at once (bounds memory: those scores and their order, ~200 MB)
RERANK_QUERIES = 256  # queries re-ranked at once (their k candidates each are scored in one call)
TOKEN_STATES = ("image_tokens", "image_token_mask", "text_tokens", "text_token_mask")

# (image tokens, text tokens) of P pairs → P match scores (higher = a better match)
PairScorer = Callable[[Tokens, Tokens], torch.Tensor]


def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    return torch.cat(state) if isinstance(state, list) else state


class RetrievalRecall(Metric):
    """Collects each image's and each caption's embedding once (dedup by key, so images seen in several batches
    or ranks, and samples repeated by a distributed sampler, count once), then ranks with one matrix product.

    - text→image: a caption is a hit at K when its image is among the K images most similar to it;
    - image→text: an image is a hit at K when *any* of its captions is among the K most similar captions.
    Each query's candidates are ranked once, by a stable sort (equal scores keep table order, so a repeated caption
    ranks after its first copy), and both the recalls and the written top lists come from that one ranking.
    `r_mean` is the mean of the six recalls at 1/5/10 (the number retrieval papers select checkpoints on).

    With `rerank_k` > 0 the metric also keeps every image's and caption's tokens, and `compute` needs a
    `pair_scorer` (set by the task, which holds the model): each query's k most similar candidates are re-ordered by
    the scorer's match scores (ALBEF's protocol, equal scores again kept in the embedding order); a positive outside
    them keeps its embedding rank. The embedding-only mean is reported too, as `itc_r_mean`.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: tuple[int, ...] = (1, 5, 10), *, rerank_k: int = 0, depth: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks, self.rerank_k, self.depth = tuple(ks), rerank_k, depth
        for name in ("image_emb", "image_key", "image_id", "text_emb", "text_key", "text_image_key", "caption_id"):
            self.add_state(name, [], dist_reduce_fx="cat")
        if rerank_k:
            for name in TOKEN_STATES:
                self.add_state(name, [], dist_reduce_fx="cat")
        self.pair_scorer: PairScorer | None = None  # set around `compute` by the task
        self.image_grid: tuple[int, int] | None = None  # the image tokens' grid (one encoder, one image size)
        self.lists: dict[str, torch.Tensor] | None = None  # the last compute's top lists (depth per query)

    def update(
        self,
        image_emb: torch.Tensor,
        image_key: torch.Tensor,
        image_id: torch.Tensor,
        text_emb: torch.Tensor,
        text_key: torch.Tensor,
        text_image_key: torch.Tensor,
        caption_id: torch.Tensor,
        image_tokens: Tokens | None = None,
        text_tokens: Tokens | None = None,
    ) -> None:
        """Images: U embeddings with their keys (unique per image in the split) and dataset ids; texts: B
        embeddings with their keys (unique per caption), their image's key and their caption ids; with
        re-ranking, the U images' and B texts' tokens (texts padded to one length for the whole split)."""
        self.image_emb.append(image_emb.detach().float())
        self.image_key.append(image_key.long())
        self.image_id.append(image_id.long())
        self.text_emb.append(text_emb.detach().float())
        self.text_key.append(text_key.long())
        self.text_image_key.append(text_image_key.long())
        self.caption_id.append(caption_id.long())
        if self.rerank_k:
            if image_tokens is None or text_tokens is None:
                raise ValueError("a re-ranking retrieval metric needs the image and text tokens")
            self.image_tokens.append(image_tokens.feats.detach())
            self.image_grid = image_tokens.grid
            self.image_token_mask.append(image_tokens.mask)
            self.text_tokens.append(text_tokens.feats.detach())
            self.text_token_mask.append(text_tokens.mask)

    def gathered(self) -> dict[str, torch.Tensor]:
        """The deduplicated split: image embeddings/ids, caption embeddings/ids, and each caption's image column."""
        image_key, image_order = _first_occurrence(_cat(self.image_key))
        _, text_order = _first_occurrence(_cat(self.text_key))
        text_image_key = _cat(self.text_image_key)[text_order]
        column = torch.searchsorted(image_key, text_image_key).clamp(max=len(image_key) - 1)
        if not torch.equal(image_key[column], text_image_key):
            raise ValueError("a caption's image was never seen by the metric")
        split = {
            "image_emb": _cat(self.image_emb)[image_order],
            "image_id": _cat(self.image_id)[image_order],
            "text_emb": _cat(self.text_emb)[text_order],
            "caption_id": _cat(self.caption_id)[text_order],
            "text_image": column,
        }
        if self.rerank_k:
            split["image_tokens"] = Tokens(
                _cat(self.image_tokens)[image_order], _cat(self.image_token_mask)[image_order], self.image_grid
            )
            split["text_tokens"] = Tokens(_cat(self.text_tokens)[text_order], _cat(self.text_token_mask)[text_order])
        return split

    @property
    def names(self) -> list[str]:
        names = [*(f"{d}_r{k}" for k in self.ks for d in ("i2t", "t2i")), "r_mean"]  # the keys of `compute`
        return [*names, "itc_r_mean"] if self.rerank_k else names

    def compute(self) -> dict[str, torch.Tensor]:
        split = self.gathered()
        t2i, i2t = embedding_ranking(split, max(self.depth, self.rerank_k))
        if not self.rerank_k:
            self.lists = {"text_to_image": t2i.top[:, : self.depth], "image_to_text": i2t.top[:, : self.depth]}
            return self._recalls(t2i.rank, i2t.rank)
        if self.pair_scorer is None:
            raise RuntimeError("re-ranking needs the matching model: compute through the task (compute_metric)")
        itc_mean = self._recalls(t2i.rank, i2t.rank)["r_mean"]
        t2i_rank, i2t_rank, self.lists = rerank(split, t2i, i2t, self.rerank_k, self.depth, self.pair_scorer)
        return {**self._recalls(t2i_rank, i2t_rank), "itc_r_mean": itc_mean}

    def _recalls(self, t2i: torch.Tensor, i2t: torch.Tensor) -> dict[str, torch.Tensor]:
        result = {}
        for k in self.ks:
            result[f"i2t_r{k}"] = (i2t < k).float().mean()
            result[f"t2i_r{k}"] = (t2i < k).float().mean()
        result["r_mean"] = torch.stack(list(result.values())).mean()
        return result

    def reset(self) -> None:
        super().reset()
        self.lists = None

    def predictions(self) -> dict[str, list[dict]]:
        """The `depth` best images for every caption and captions for every image, from the ranking `compute` scored
        (after re-ranking, if any: call after `compute`), as result records."""
        split = self.gathered()
        if self.lists is None:
            if self.rerank_k:
                raise RuntimeError("compute() first: the re-ranked lists come from it")
            self.compute()  # a split nobody scored (no recall logged): the same ranking all the same
        return ranking_records(split, self.lists)


def _first_occurrence(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique keys and, for each, the position of its first occurrence in `keys`."""
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    positions = torch.arange(len(keys), device=keys.device)
    first = torch.full((len(unique),), len(keys), dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique, first


class Ranking(NamedTuple):
    """Each query's 0-based position of its first right candidate, and its first candidates (best first)."""

    rank: torch.Tensor  # int64 [queries]
    top: torch.Tensor  # int64 [queries, keep]


def first_true(flags: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the first True (argmax returns the first of equal maxima)."""
    return flags.to(torch.uint8).argmax(dim=1)


@torch.no_grad()
def stable_ranking(
    query_emb: torch.Tensor,
    candidate_emb: torch.Tensor,
    query_image: torch.Tensor,
    candidate_image: torch.Tensor,
    keep: int,
) -> Ranking:
    """Every query's candidates by similarity `query_emb @ candidate_emb.T`, best first, equal scores in table order
    (a stable sort); a candidate is right when its image is the query's. Every query needs a right candidate."""
    rows = max(1, SORT_ELEMENTS // max(1, candidate_emb.shape[0]))
    ranks, tops = [], []
    for start in range(0, query_emb.shape[0], rows):
        similarity = query_emb[start : start + rows] @ candidate_emb.T
        order = similarity.argsort(dim=1, descending=True, stable=True)
        ranks.append(first_true(candidate_image[order] == query_image[start : start + rows, None]))
        tops.append(order[:, :keep])
    if not ranks:
        return Ranking(query_image.new_zeros(0), query_image.new_zeros(0, min(keep, candidate_emb.shape[0])))
    return Ranking(torch.cat(ranks), torch.cat(tops))


def embedding_ranking(split: dict[str, torch.Tensor], keep: int) -> tuple[Ranking, Ranking]:
    """(text→image, image→text) rankings of the split by embedding similarity, each query's first `keep` kept."""
    text_image = split["text_image"]
    each_image = torch.arange(len(split["image_emb"]), device=text_image.device)  # an image row's image is itself
    return (
        stable_ranking(split["text_emb"], split["image_emb"], text_image, each_image, keep),
        stable_ranking(split["image_emb"], split["text_emb"], each_image, text_image, keep),
    )


def ranking_records(split: dict[str, torch.Tensor], lists: dict[str, torch.Tensor]) -> dict[str, list[dict]]:
    image_ids, caption_ids = split["image_id"].cpu(), split["caption_id"].cpu()
    best_images, best_texts = lists["text_to_image"].cpu(), lists["image_to_text"].cpu()
    return {
        "text_to_image": [
            {"caption_id": int(caption_ids[t]), "image_ids": image_ids[best_images[t]].tolist()}
            for t in range(len(caption_ids))
        ],
        "image_to_text": [
            {"image_id": int(image_ids[i]), "caption_ids": caption_ids[best_texts[i]].tolist()}
            for i in range(len(image_ids))
        ],
    }


@torch.no_grad()
def rerank(
    split: dict, t2i: Ranking, i2t: Ranking, k: int, depth: int, score: PairScorer
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Ranks after re-ordering each query's k best embedding candidates (from `t2i`/`i2t`, which keep at least k)
    by `score`, and each query's `depth` best candidates in that order. Under DDP each process re-ranks its share of
    the queries and the shares are gathered."""
    text_image = split["text_image"]
    each_image = torch.arange(len(split["image_emb"]), device=text_image.device)  # an image row's image is itself
    images, texts = split["image_tokens"], split["text_tokens"]

    def pairs(image_rows: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
        image = images.select(image_rows.reshape(-1))
        text = Tokens(texts.feats[text_rows.reshape(-1)], texts.mask[text_rows.reshape(-1)])
        return score(image, text).float().view(image_rows.shape)

    def text_queries(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        side = (t2i, text_image, each_image)
        return _rerank_queries(rows, *side, k, depth, lambda query, candidate: pairs(candidate, query))

    def image_queries(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _rerank_queries(rows, i2t, each_image, text_image, k, depth, pairs)

    t2i_rank, text_lists = _in_shares(text_queries, len(t2i.rank), text_image.device)
    i2t_rank, image_lists = _in_shares(image_queries, len(i2t.rank), text_image.device)
    return t2i_rank, i2t_rank, {"text_to_image": text_lists, "image_to_text": image_lists}


def _rerank_queries(
    rows: torch.Tensor,
    embedding: Ranking,
    query_image: torch.Tensor,
    candidate_image: torch.Tensor,
    k: int,
    depth: int,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rank of each query's first right candidate, its `depth` best candidates) for the queries `rows`,
    `RERANK_QUERIES` at a time: the embedding order with its first k re-ordered by match score (a stable sort).
    A candidate is right when its image (`candidate_image`) is the query's (`query_image`); `score(query rows,
    candidate rows)`, both Q'×k, gives the pairs' match scores."""
    k = min(k, embedding.top.shape[1])
    ranks = [embedding.rank[:0]]
    lists = [embedding.top[:0, :depth]]
    for start in range(0, len(rows), RERANK_QUERIES):
        query = rows[start : start + RERANK_QUERIES]
        head = embedding.top[query, :k]
        matched = score(query[:, None].expand_as(head), head)
        head = head.gather(1, matched.argsort(dim=1, descending=True, stable=True))
        lists.append(torch.cat([head, embedding.top[query, k:]], dim=1)[:, :depth])
        right = candidate_image[head] == query_image[query][:, None]
        # No right candidate among the first k: the embedding order below them is unchanged, so is its rank.
        ranks.append(torch.where(right.any(1), first_true(right), embedding.rank[query]))
    return torch.cat(ranks), torch.cat(lists)


def _in_shares(
    run: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], count: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """`run(rows)` over rows 0..count-1: one contiguous share per DDP process, the results gathered in row order
    (every process gets them all); in one process, all rows at once."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return run(torch.arange(count, device=device))
    world, rank = dist.get_world_size(), dist.get_rank()
    share = -(-count // world)
    rows = torch.arange(rank * share, min(count, (rank + 1) * share), device=device)
    results = []
    for part in run(rows):
        padded = part.new_zeros((share, *part.shape[1:]))
        padded[: len(part)] = part
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        results.append(torch.cat(gathered)[:count])
    return tuple(results)
