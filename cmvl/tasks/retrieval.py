"""Image-text retrieval: a dual encoder trained with a symmetric InfoNCE loss, scored by Recall@K both ways."""

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

from cmvl.metrics.retrieval import RetrievalRecall, top_k_rankings
from cmvl.models.vl_model import VisionLanguageModel
from cmvl.tasks.base import SampleNote, SplitTargets, Task


@dataclass
class RetrievalTargets(SplitTargets):
    image_id: np.ndarray  # int64 [N]
    caption_id: np.ndarray  # int64 [N]
    annotated: bool = True

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices)
        return {"image_id": torch.from_numpy(self.image_id[idx]), "caption_id": torch.from_numpy(self.caption_id[idx])}


class DualEncoderHead(nn.Module):
    """Projections of the pooled image and text tokens into a shared space, and the learnable temperature."""

    def __init__(self, dim: int, embed_dim: int, temperature: float, learn_temperature: bool) -> None:
        super().__init__()
        self.image_proj = nn.Linear(dim, embed_dim)
        self.text_proj = nn.Linear(dim, embed_dim)
        # CLIP's parametrisation: logit scale = exp(θ), θ learnt, capped at 100.
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)), requires_grad=learn_temperature)


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


def multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log(softmax mass on the row's positives): InfoNCE where a row may have several right
    columns (the other captions of the same image are not negatives)."""
    all_mass = torch.logsumexp(logits, dim=1)
    positive_mass = torch.logsumexp(logits.masked_fill(~positive, -torch.inf), dim=1)
    return (all_mass - positive_mass).mean()


class RetrievalTask(Task):
    """Contrastive dual encoder (CLIP/ALIGN-style): pooled vision tokens and pooled text tokens, each projected and
    L2-normalised; symmetric InfoNCE with a learnable temperature over the batch gathered from all DDP ranks.
    The fusion module is not used. Evaluation embeds each image and caption once and ranks with one product."""

    name = "retrieval"
    table_kind = "captions"
    monitor_key = "r_mean"
    uses = frozenset({"vision", "text"})
    group_rows_by_image = False  # one caption per image per batch: the other images are the negatives

    def __init__(
        self, *, embed_dim: int = 128, temperature: float = 0.07, learn_temperature: bool = True, top_k: int = 10
    ) -> None:
        self.embed_dim, self.temperature, self.learn_temperature = embed_dim, temperature, learn_temperature
        self.top_k = top_k

    def texts(self, table: pa.Table) -> list[str]:
        return table.column("caption").to_pylist()

    def targets(self, table: pa.Table) -> RetrievalTargets:
        return RetrievalTargets(
            image_id=table.column("image_id").to_numpy().astype(np.int64),
            caption_id=table.column("caption_id").to_numpy().astype(np.int64),
        )

    def build_head(self, dim: int) -> nn.Module:
        return DualEncoderHead(dim, self.embed_dim, self.temperature, self.learn_temperature)

    def forward(self, model: VisionLanguageModel, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        head: DualEncoderHead = model.heads[self.name]
        images = model.encode_images(batch["images"]).pooled_mean()
        texts = model.encode_texts(batch["input_ids"], batch["attention_mask"]).pooled_mean()
        return {
            "image_emb": F.normalize(head.image_proj(images).float(), dim=-1),  # U distinct images
            "text_emb": F.normalize(head.text_proj(texts).float(), dim=-1),  # B captions
            "logit_scale": head.log_scale.exp().clamp(max=100.0),
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        # Image of each caption row (B×E, same size on every rank, so it can be gathered); the keys say which rows
        # show the same image, on any rank.
        image_rows = gather_rows(outputs["image_emb"][batch["image_index"]], differentiable=True)
        texts = gather_rows(outputs["text_emb"], differentiable=True)
        keys = gather_rows(batch["image_key"][batch["image_index"]], differentiable=False)
        logits = outputs["logit_scale"] * texts @ image_rows.T
        positive = keys[:, None] == keys[None, :]
        return (multi_positive_nce(logits, positive) + multi_positive_nce(logits.T, positive.T)) / 2

    def make_metric(self) -> RetrievalRecall:
        return RetrievalRecall()

    def update_metric(self, metric: RetrievalRecall, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        image_index, image_key = batch["image_index"], batch["image_key"]
        image_id = torch.zeros_like(image_key).scatter_(0, image_index, batch["image_id"].to(image_key.device))
        metric.update(
            outputs["image_emb"],
            image_key,
            image_id,
            outputs["text_emb"],
            batch["index"],
            image_key[image_index],
            batch["caption_id"],
        )

    def sample_notes(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any], count: int) -> list[SampleNote]:
        """Each image's top 3 captions among this batch's captions (+: one of its own); the split-wide ranking is
        the metric's and the predictions file's."""
        scores = outputs["image_emb"] @ outputs["text_emb"].T  # U images × B captions
        notes = []
        for u in range(min(count, scores.shape[0])):
            top = scores[u].topk(min(3, scores.shape[1])).indices.tolist()
            own = (batch["image_index"] == u).nonzero().flatten().tolist()
            lines = [f"{'+' if j in own else '-'} {batch['text'][j]}" for j in top]
            notes.append(SampleNote(u, ["top captions in this batch:", *lines]))
        return notes

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> list[dict[str, Any]]:
        return []  # rankings need the whole split: see final_predictions

    def final_predictions(self, metric: RetrievalRecall) -> dict[str, list[dict[str, Any]]]:
        return top_k_rankings(metric.gathered(), self.top_k)
