"""Image-text retrieval: a dual encoder trained with a symmetric InfoNCE loss (or the VSE++ triplet hinge), scored by
Recall@K both ways."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cmvl.batch import Batch, TensorRecord
from cmvl.errors import ConfigError
from cmvl.metrics.retrieval import RetrievalRecall
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.tokens import Tokens
from cmvl.tasks.base import EMPTY, SampleNote, SplitTargets, Task
from cmvl.tasks.retrieval_losses import LOSSES, hinge_triplet, multi_positive_nce, positive_pairs, text_keys


@dataclass
class RetrievalTargetsBatch(TensorRecord):
    image_id: torch.Tensor  # B int64: each caption's image
    caption_id: torch.Tensor  # B int64


@dataclass
class RetrievalOutputs(TensorRecord):
    """L2-normalised embeddings of the batch's U distinct images and B captions and the logit scale; with `itm` in
    training, the matching logits and labels of the sampled pairs; in evaluation with re-ranking, the tokens the
    metric keeps to score candidate pairs with the fusion."""

    image_emb: torch.Tensor  # U×E
    text_emb: torch.Tensor  # B×E
    logit_scale: torch.Tensor  # scalar
    itm_logits: torch.Tensor | None = None  # P: one per (image, caption) pair
    itm_labels: torch.Tensor | None = None  # P: 1 for a true pair, 0 for a negative
    image_tokens: Tokens | None = None  # U images' tokens (re-ranking)
    text_tokens: Tokens | None = None  # B captions' tokens, padded to task.text_max_length (re-ranking)
    hardest: torch.Tensor | None = None  # triplet in training: 0-dim bool, False while warming up on summed violations


@dataclass
class RetrievalTargets(SplitTargets):
    image_id: np.ndarray  # int64 [N]
    caption_id: np.ndarray  # int64 [N]
    annotated: bool = True

    def collate(self, indices: list[int]) -> RetrievalTargetsBatch:
        idx = np.asarray(indices)
        return RetrievalTargetsBatch(torch.from_numpy(self.image_id[idx]), torch.from_numpy(self.caption_id[idx]))


class DualEncoderHead(nn.Module):
    """Projections of the pooled image and text tokens into a shared space, the learnable temperature, and with
    `itm` an image-text matching logit on the fusion's pooled vector. With `count_steps`, the training batches seen
    (the triplet warm-up's clock: a buffer, so it is checkpointed and resumed with the weights)."""

    def __init__(
        self,
        dim: int,
        embed_dim: int,
        temperature: float,
        learn_temperature: bool,
        itm: bool,
        count_steps: bool = False,
    ) -> None:
        super().__init__()
        self.image_proj = nn.Linear(dim, embed_dim)
        self.text_proj = nn.Linear(dim, embed_dim)
        # CLIP's parametrisation: logit scale = exp(θ), θ learnt, capped at 100.
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)), requires_grad=learn_temperature)
        self.itm = nn.Linear(dim, 1) if itm else None
        if count_steps:
            self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))


def match_logits(model: VisionLanguageModel, head: DualEncoderHead, images: Tokens, texts: Tokens) -> torch.Tensor:
    """The matching logit of each (image, text) pair: the fusion reads both token sequences."""
    return head.itm(model.fusion(images, texts).pooled).squeeze(-1)


def sample_negatives(similarity: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One negative column per row, drawn with probability softmax(similarity) over the allowed columns (hard but
    not always the hardest: the most similar "negative" is often a true match the annotations do not list), and
    whether the row had any allowed column."""
    has_any = allowed.any(dim=1)
    logits = similarity.float().masked_fill(~allowed, -torch.inf)
    logits[~has_any] = 0.0  # rows without a negative draw anything; their pairs are dropped
    return torch.multinomial(logits.softmax(dim=1), 1).squeeze(1), has_any


def gather_rows(x: torch.Tensor, *, differentiable: bool) -> torch.Tensor:
    """Every rank's rows, concatenated (rank order); gradients flow back to each rank's own rows if asked."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if differentiable:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x))
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


class RetrievalTask(Task):
    """Contrastive dual encoder (CLIP/ALIGN-style): pooled vision tokens and pooled text tokens, each projected and
    L2-normalised; symmetric InfoNCE with a learnable temperature over the batch gathered from all DDP ranks.
    Evaluation embeds each image and caption once and ranks with one product.

    With `itm`, the fusion module also learns image-text matching (ALBEF): every caption with its image, with a
    hard negative image and with a hard negative caption drawn from the batch by similarity; binary cross-entropy,
    weighted `itm_weight`. Evaluation then re-orders each query's `rerank_k` most similar candidates by the
    matching logit (each image's and caption's tokens are kept once, the pairs run through the fusion).

    With `loss=triplet`, the VSE++ hinge on cosine similarities replaces InfoNCE: each true pair against its hardest
    negative image and caption in the gathered batch, by `margin`; captions of the same image and captions written
    the same way (same token ids) are never negatives; the first `triplet_warmup_steps` training batches sum every
    violation instead (VSE0), which keeps the max-violation form from collapsing at the start. The temperature is
    then not used (nor learnt)."""

    name = "retrieval"
    table_kind = "captions"
    epochs = 5  # default budget (trainer.max_epochs=null), measured in the README
    monitor_key = "r_mean"
    group_rows_by_image = False  # one caption per image per batch: the other images are the negatives
    sample_legend = "captions: + = one of the image's own, - = another image's; right = its own caption ranked first"

    def __init__(
        self,
        *,
        embed_dim: int = 128,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        top_k: int = 10,
        itm: bool = False,
        itm_weight: float = 1.0,
        rerank_k: int = 16,
        text_max_length: int = 32,
        loss: str = "infonce",
        margin: float = 0.2,
        triplet_warmup_steps: int = 0,
    ) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"task.loss={loss}: choose one of {', '.join(LOSSES)}")
        if margin <= 0 or triplet_warmup_steps < 0:
            raise ConfigError(f"task.margin={margin}, task.triplet_warmup_steps={triplet_warmup_steps}: need > 0, >= 0")
        self.loss_kind, self.margin = loss, margin
        self.triplet_warmup_steps = triplet_warmup_steps if loss == "triplet" else 0
        # The hinge reads cosine similarities: a temperature would be a parameter without a gradient (DDP refuses).
        learn_temperature = learn_temperature and loss == "infonce"
        self.embed_dim, self.temperature, self.learn_temperature = embed_dim, temperature, learn_temperature
        self.top_k, self.itm, self.itm_weight = top_k, itm, itm_weight
        if itm and (rerank_k < 0 or itm_weight <= 0):
            raise ConfigError(f"task.rerank_k={rerank_k}, task.itm_weight={itm_weight}: need k >= 0 and a weight > 0")
        self.rerank_k = rerank_k if itm else 0
        self.text_max_length = text_max_length  # texts' tokens are kept padded to this length for re-ranking
        self.parts = frozenset({"vision", "text", "fusion"} if itm else {"vision", "text"})  # itm: fusion scores

    def texts(self, table: pa.Table) -> list[str]:
        return table.column("caption").to_pylist()

    def targets(self, table: pa.Table) -> RetrievalTargets:
        return RetrievalTargets(
            image_id=table.column("image_id").to_numpy().astype(np.int64),
            caption_id=table.column("caption_id").to_numpy().astype(np.int64),
        )

    def build_head(self, dim: int) -> nn.Module:
        return DualEncoderHead(
            dim,
            self.embed_dim,
            self.temperature,
            self.learn_temperature,
            self.itm,
            count_steps=self.triplet_warmup_steps > 0,
        )

    def _embed(self, model: VisionLanguageModel, batch: Batch) -> tuple[RetrievalOutputs, Tokens, Tokens]:
        head: DualEncoderHead = model.heads[self.name]
        images = model.encode_images(batch.images)
        texts = model.encode_texts(batch.input_ids, batch.attention_mask)
        outputs = RetrievalOutputs(
            image_emb=F.normalize(head.image_proj(images.pooled_mean()).float(), dim=-1),  # U distinct images
            text_emb=F.normalize(head.text_proj(texts.pooled_mean()).float(), dim=-1),  # B captions
            logit_scale=head.log_scale.exp().clamp(max=100.0),
        )
        return outputs, images, texts

    def forward(self, model: VisionLanguageModel, batch: Batch) -> RetrievalOutputs:
        outputs, images, texts = self._embed(model, batch)
        if self.itm:
            outputs.itm_logits, outputs.itm_labels = self._matching_pairs(model, outputs, images, texts, batch)
        if self.triplet_warmup_steps:
            steps = model.heads[self.name].train_steps
            outputs.hardest = steps >= self.triplet_warmup_steps  # chosen on the device: no host sync
            steps.add_(1)
        return outputs

    def eval_forward(self, model: VisionLanguageModel, batch: Batch) -> RetrievalOutputs:
        outputs, images, texts = self._embed(model, batch)
        if self.rerank_k:  # kept by the metric for re-ranking; texts padded to one length for the whole split
            pad = self.text_max_length - texts.feats.shape[1]
            outputs.image_tokens = images
            outputs.text_tokens = Tokens(F.pad(texts.feats, (0, 0, 0, pad)), F.pad(texts.mask, (0, pad)))
        return outputs

    def _matching_pairs(
        self,
        model: VisionLanguageModel,
        outputs: RetrievalOutputs,
        images: Tokens,
        texts: Tokens,
        batch: Batch,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Matching logits and labels of each caption with its image (1), a negative image (0) and of its image
        with a negative caption (0), negatives drawn from this process's batch."""
        row_image, keys = batch.image_index, batch.image_key
        captions = torch.arange(len(row_image), device=row_image.device)
        with torch.no_grad():
            row_keys = keys[row_image]
            image_emb, text_emb = outputs.image_emb, outputs.text_emb
            negative_image, has_image = sample_negatives(text_emb @ image_emb.T, row_keys[:, None] != keys[None, :])
            negative_text, has_text = sample_negatives(
                image_emb[row_image] @ text_emb.T, row_keys[:, None] != row_keys[None, :]
            )
        image_rows = torch.cat([row_image, negative_image[has_image], row_image[has_text]])
        text_rows = torch.cat([captions, captions[has_image], negative_text[has_text]])
        labels = torch.zeros(len(image_rows), device=image_rows.device)
        labels[: len(captions)] = 1.0
        logits = match_logits(
            model,
            model.heads[self.name],
            images.select(image_rows),
            texts.select(text_rows),
        )
        return logits.float(), labels

    def loss(self, outputs: RetrievalOutputs, batch: Batch) -> torch.Tensor:
        contrastive = self._contrastive_loss(outputs, batch)
        if not self.itm:
            return contrastive
        matching = F.binary_cross_entropy_with_logits(outputs.itm_logits, outputs.itm_labels)
        return contrastive + self.itm_weight * matching

    def _contrastive_loss(self, outputs: RetrievalOutputs, batch: Batch) -> torch.Tensor:
        # Image of each caption row (B×E, same size on every rank, so it can be gathered); the keys say which rows
        # show the same image, on any rank.
        image_rows = gather_rows(outputs.image_emb[batch.image_index], differentiable=True)
        texts = gather_rows(outputs.text_emb, differentiable=True)
        keys = gather_rows(batch.image_key[batch.image_index], differentiable=False)
        if self.loss_kind == "triplet":
            captions = gather_rows(text_keys(batch.input_ids, batch.attention_mask), differentiable=False)
            hardest = True if outputs.hardest is None else outputs.hardest
            return hinge_triplet(
                texts @ image_rows.T, positive_pairs(keys, captions), margin=self.margin, hardest=hardest
            )
        logits = outputs.logit_scale * texts @ image_rows.T
        positive = keys[:, None] == keys[None, :]
        return (multi_positive_nce(logits, positive) + multi_positive_nce(logits.T, positive.T)) / 2

    def make_metric(self) -> RetrievalRecall:
        return RetrievalRecall(rerank_k=self.rerank_k, depth=self.top_k)

    def compute_metric(self, metric: RetrievalRecall, model: VisionLanguageModel) -> dict[str, torch.Tensor]:
        if not self.rerank_k:
            return metric.compute()
        head = model.heads[self.name]
        metric.pair_scorer = lambda images, texts: _batched_match_logits(model, head, images, texts)
        try:
            return metric.compute()
        finally:
            metric.pair_scorer = None  # the metric keeps no reference to the model

    def update_metric(self, metric: RetrievalRecall, outputs: RetrievalOutputs, batch: Batch) -> None:
        targets: RetrievalTargetsBatch = batch.targets
        image_index, image_key = batch.image_index, batch.image_key
        image_id = torch.zeros_like(image_key).scatter_(0, image_index, targets.image_id.to(image_key.device))
        metric.update(
            outputs.image_emb,
            image_key,
            image_id,
            outputs.text_emb,
            batch.index,
            image_key[image_index],
            targets.caption_id,
            outputs.image_tokens,
            outputs.text_tokens,
        )

    def sample_notes(self, outputs: RetrievalOutputs, batch: Batch, count: int) -> list[SampleNote]:
        """Each image's top 3 captions among this batch's captions (+: one of its own); the split-wide ranking is
        the metric's and the predictions file's."""
        scores = outputs.image_emb @ outputs.text_emb.T  # U images × B captions
        notes = []
        for u in range(min(count, scores.shape[0])):
            top = scores[u].argsort(descending=True, stable=True)[:3].tolist()  # ties in table order, as the metric
            own = (batch.image_index == u).nonzero().flatten().tolist()
            lines = [f"{'+' if j in own else '-'} {batch.texts[j] or EMPTY}" for j in top]
            verdict = "right" if top and top[0] in own else "wrong"
            notes.append(SampleNote(u, ["top captions in this batch:", *lines], verdict=verdict))
        return notes

    def predictions(self, outputs: RetrievalOutputs, batch: Batch) -> list[dict[str, Any]]:
        return []  # rankings need the whole split: see final_predictions

    def final_predictions(self, metric: RetrievalRecall) -> dict[str, list[dict[str, Any]]]:
        return metric.predictions()


MATCH_PAIRS = 1024  # image-text pairs run through the fusion at once when re-ranking


@torch.no_grad()
def _batched_match_logits(
    model: VisionLanguageModel, head: DualEncoderHead, images: Tokens, texts: Tokens
) -> torch.Tensor:
    parts = []
    for start in range(0, images.feats.shape[0], MATCH_PAIRS):
        part = slice(start, start + MATCH_PAIRS)
        text = Tokens(texts.feats[part], texts.mask[part])
        real = text.mask.any(dim=0)  # the split-wide padding trimmed to these texts' longest
        text = Tokens(text.feats[:, real], text.mask[:, real])
        parts.append(match_logits(model, head, images.select(part), text))
    return torch.cat(parts)
