"""`detector`: open-vocabulary detection on cmvl's encoders (OWL-ViT's recipe on a grid of vision tokens).

Every token of the vision encoder's H×W grid is one detection: it predicts a box (an MLP whose output is added to a
positional prior: the box of its own cell, in logit space) and, for each text query (category names, phrases),
a score that is the similarity of its embedding to the query's text embedding with a learnt per-token scale and
shift. New strings are new classes. With `condition=fusion` each query first attends to the image through the
fusion (MDETR-style), so its embedding depends on what the image shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cmvl.batch import TensorRecord, TextQueries
from cmvl.errors import ConfigError
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.fusion.base import mlp
from cmvl.models.tokens import Tokens

CONDITIONS = ("none", "fusion")  # how a query's embedding is made: its text alone, or its text attending to the image
FOCAL_PRIOR = 0.01  # initial score of every (token, query) pair (the focal-loss prior of RetinaNet / DETR)
INITIAL_SCALE = 10.0  # initial similarity scale: cosine similarities in [-1, 1] become logits in about [-10, 10]


@dataclass
class Detections(TensorRecord):
    """The detection task's outputs: per image: one box per grid token and one logit per (token, query)."""

    boxes: torch.Tensor  # B×N×4: cx, cy, w, h in [0, 1] of the image
    logits: torch.Tensor  # B×N×Q


def cell_box_prior(height: int, width: int, device: torch.device) -> torch.Tensor:
    """N×4 logits of each grid cell's own box (centre of the cell, one cell wide and high), row-major like the grid:
    a token predicts an offset from where it sits."""
    ys, xs = torch.meshgrid(
        (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height,
        (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width,
        indexing="ij",
    )
    sizes = torch.tensor([1.0 / width, 1.0 / height], device=device).expand(height * width, 2)
    prior = torch.cat([torch.stack([xs.flatten(), ys.flatten()], dim=-1), sizes], dim=-1)
    return torch.logit(prior.clamp(1e-4, 1 - 1e-4))


class DetectionHead(nn.Module):
    """Boxes and query similarities for grid tokens (at `dim`). Scores: cosine similarity of the token's class
    embedding and the query embedding, times a learnt per-token scale, plus a learnt per-token shift."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.box = mlp(dim, hidden, 4, dropout)
        self.class_embedding = nn.Linear(dim, dim)
        self.query_embedding = nn.Linear(dim, dim)
        self.scale, self.shift = nn.Linear(dim, 1), nn.Linear(dim, 1)
        nn.init.zeros_(self.box[-1].weight)  # start at the cell's prior box
        nn.init.zeros_(self.box[-1].bias)
        nn.init.constant_(self.scale.bias, INITIAL_SCALE)
        nn.init.constant_(self.shift.bias, float(torch.logit(torch.tensor(FOCAL_PRIOR))))

    def forward(self, grid: Tokens, queries: torch.Tensor) -> Detections:
        """`grid`: B×N×D grid tokens; `queries`: Q×D (the same for every image) or B×Q×D (conditioned on each)."""
        height, width = grid.grid
        feats = grid.feats
        boxes = torch.sigmoid(self.box(feats).float() + cell_box_prior(height, width, feats.device))
        tokens = F.normalize(self.class_embedding(feats), dim=-1)
        queries = F.normalize(self.query_embedding(queries), dim=-1)
        similarity = tokens @ (queries.t() if queries.dim() == 2 else queries.transpose(1, 2))  # B×N×Q
        scale = F.elu(self.scale(feats)) + 1  # positive
        return Detections(boxes=boxes, logits=(similarity * scale + self.shift(feats)).float())


class DetectorModel(VisionLanguageModel):
    """The vision and text encoders (and the fusion, for `condition=fusion`) with a `DetectionHead` per detection
    task. It is a `vl_fusion` model too, so the other tasks run on it (multitask with detection)."""

    name = "detector"
    parts = frozenset({"vision", "text", "fusion"})

    def query_embeddings(self, queries: TextQueries) -> Tokens:
        """The Q query texts as text tokens at `model.dim` (each query once, whatever the batch)."""
        return self.encode_texts(queries.input_ids, queries.attention_mask)

    def detect(
        self,
        images: torch.Tensor,
        image_index: torch.Tensor,
        queries: TextQueries,
        *,
        head: DetectionHead,
        condition: str,
    ) -> Detections:
        """Boxes and per-query logits for the B samples (`image_index` picks each one's image among `images`)."""
        vision = self.encode_images(images)
        if vision.grid is None:
            raise ConfigError(
                "task=detection predicts a box from each token of the image's grid, and this vision encoder's "
                "tokens have no spatial grid; use a CNN or ViT encoder (vision=tiny_cnn, resnet18, vit_b16 …)"
            )
        text = self.query_embeddings(queries)
        if condition == "fusion":
            per_image = self._conditioned_queries(vision, text)[image_index]  # B×Q×D
        else:
            per_image = text.pooled_mean()  # Q×D
        return head(vision.select(image_index).grid_tokens(), per_image)

    def _conditioned_queries(self, vision: Tokens, text: Tokens) -> torch.Tensor:
        """U×Q×D: each query's pooled fusion output with each image (the query attends to the image)."""
        images, count = vision.feats.shape[0], text.feats.shape[0]
        pair_image = torch.arange(images, device=vision.feats.device).repeat_interleave(count)
        pair_text = torch.arange(count, device=vision.feats.device).repeat(images)
        fused = self.part("fusion")(vision.select(pair_image), text.select(pair_text))
        return fused.pooled.reshape(images, count, -1)
