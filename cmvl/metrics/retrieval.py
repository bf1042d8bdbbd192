"""`RetrievalRecall`: image→text and text→image Recall@K with many captions per image (the COCO/Flickr protocol)."""

from __future__ import annotations

import torch
from torchmetrics import Metric

CHUNK = 4096  # rows of the similarity matrix scored at once (bounds memory: CHUNK × images floats)


def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    return torch.cat(state) if isinstance(state, list) else state


class RetrievalRecall(Metric):
    """Collects each image's and each caption's embedding once (dedup by key, so images seen in several batches
    or ranks, and samples repeated by a distributed sampler, count once), then ranks with one matrix product.

    - text→image: a caption is a hit at K when its image is among the K images most similar to it;
    - image→text: an image is a hit at K when *any* of its captions is among the K most similar captions.
    Ranks count the candidates scored strictly higher than the (best) positive. `r_mean` is the mean of the six
    recalls at 1/5/10 (the number retrieval papers select checkpoints on).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: tuple[int, ...] = (1, 5, 10), **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = tuple(ks)
        for name in ("image_emb", "image_key", "image_id", "text_emb", "text_key", "text_image_key", "caption_id"):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(
        self,
        image_emb: torch.Tensor,
        image_key: torch.Tensor,
        image_id: torch.Tensor,
        text_emb: torch.Tensor,
        text_key: torch.Tensor,
        text_image_key: torch.Tensor,
        caption_id: torch.Tensor,
    ) -> None:
        """Images: U embeddings with their keys (unique per image in the split) and dataset ids; texts: B
        embeddings with their keys (unique per caption), their image's key and their caption ids."""
        self.image_emb.append(image_emb.detach().float())
        self.image_key.append(image_key.long())
        self.image_id.append(image_id.long())
        self.text_emb.append(text_emb.detach().float())
        self.text_key.append(text_key.long())
        self.text_image_key.append(text_image_key.long())
        self.caption_id.append(caption_id.long())

    def gathered(self) -> dict[str, torch.Tensor]:
        """The deduplicated split: image embeddings/ids, caption embeddings/ids, and each caption's image column."""
        image_key, image_order = _first_occurrence(_cat(self.image_key))
        _, text_order = _first_occurrence(_cat(self.text_key))
        text_image_key = _cat(self.text_image_key)[text_order]
        column = torch.searchsorted(image_key, text_image_key).clamp(max=len(image_key) - 1)
        if not torch.equal(image_key[column], text_image_key):
            raise ValueError("a caption's image was never seen by the metric")
        return {
            "image_emb": _cat(self.image_emb)[image_order],
            "image_id": _cat(self.image_id)[image_order],
            "text_emb": _cat(self.text_emb)[text_order],
            "caption_id": _cat(self.caption_id)[text_order],
            "text_image": column,
        }

    @property
    def names(self) -> list[str]:
        return [*(f"{d}_r{k}" for k in self.ks for d in ("i2t", "t2i")), "r_mean"]  # the keys of `compute`

    def compute(self) -> dict[str, torch.Tensor]:
        split = self.gathered()
        t2i, i2t = recall_ranks(split["image_emb"], split["text_emb"], split["text_image"])
        result = {}
        for k in self.ks:
            result[f"i2t_r{k}"] = (i2t < k).float().mean()
            result[f"t2i_r{k}"] = (t2i < k).float().mean()
        result["r_mean"] = torch.stack(list(result.values())).mean()
        return result


def _first_occurrence(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique keys and, for each, the position of its first occurrence in `keys`."""
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    positions = torch.arange(len(keys), device=keys.device)
    first = torch.full((len(unique),), len(keys), dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique, first


@torch.no_grad()
def recall_ranks(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rank of each caption's image among all images, best rank of each image's captions among all captions),
    0-based, from similarities `text_emb @ image_emb.T` computed CHUNK captions at a time."""
    num_images = image_emb.shape[0]
    t2i = torch.empty(text_emb.shape[0], dtype=torch.long, device=text_emb.device)
    best_positive = torch.full((num_images,), -torch.inf, device=text_emb.device)
    for start in range(0, text_emb.shape[0], CHUNK):
        sim = text_emb[start : start + CHUNK] @ image_emb.T  # chunk × images
        own = text_image[start : start + CHUNK]
        positive = sim.gather(1, own[:, None])
        t2i[start : start + CHUNK] = (sim > positive).sum(1)
        best_positive.scatter_reduce_(0, own, positive.squeeze(1), reduce="amax")
    # Second pass (the product is cheap next to holding captions × images): captions above each image's best.
    i2t = torch.zeros(num_images, dtype=torch.long, device=text_emb.device)
    for start in range(0, text_emb.shape[0], CHUNK):
        i2t += (text_emb[start : start + CHUNK] @ image_emb.T > best_positive[None, :]).sum(0)
    return t2i, i2t


@torch.no_grad()
def top_k_rankings(split: dict[str, torch.Tensor], k: int = 10) -> dict[str, list[dict]]:
    """The `k` best images for every caption and the `k` best captions for every image, as result records."""
    text_emb, image_emb = split["text_emb"], split["image_emb"]
    k_images, k_texts = min(k, image_emb.shape[0]), min(k, text_emb.shape[0])
    best_images = torch.cat(
        [(text_emb[s : s + CHUNK] @ image_emb.T).topk(k_images, dim=1).indices for s in range(0, len(text_emb), CHUNK)]
    ).cpu()
    best_texts = torch.cat(
        [(image_emb[s : s + CHUNK] @ text_emb.T).topk(k_texts, dim=1).indices for s in range(0, len(image_emb), CHUNK)]
    ).cpu()
    image_ids, caption_ids = split["image_id"].cpu(), split["caption_id"].cpu()
    return {
        "text_to_image": [
            {"caption_id": int(caption_ids[t]), "image_ids": image_ids[best_images[t]].tolist()}
            for t in range(len(text_emb))
        ],
        "image_to_text": [
            {"image_id": int(image_ids[i]), "caption_ids": caption_ids[best_texts[i]].tolist()}
            for i in range(len(image_emb))
        ],
    }
