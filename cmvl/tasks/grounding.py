"""Phrase grounding: the box of the image region a phrase describes (Visual Genome regions, shapes objects)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from cmvl.batch import Batch, TensorRecord
from cmvl.errors import ConfigError
from cmvl.metrics.grounding import GroundingAccuracy, accuracy_key, cxcywh_to_xyxy, paired_box_iou
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.fusion.base import mlp
from cmvl.models.tokens import Tokens
from cmvl.tasks.base import PREDICTED, TRUE, SampleNote, SplitTargets, Task
from cmvl.tasks.prediction import BoxResult, PredictOptions, PredictTargets


@dataclass
class GroundingTargetsBatch(TensorRecord):
    region_id: torch.Tensor  # B int64
    image_id: torch.Tensor  # B int64
    box: torch.Tensor  # B×4 float32: cx, cy, w, h as fractions of the image size
    image_size: torch.Tensor  # B×2 float32: image width, height in pixels


@dataclass
class BoxOutputs(TensorRecord):
    box: torch.Tensor  # B×4: the predicted cx, cy, w, h in [0, 1]


@dataclass
class GroundingTargets(SplitTargets):
    region_id: np.ndarray  # int64 [N]
    image_id: np.ndarray  # int64 [N]
    box: np.ndarray  # float32 [N, 4]: cx, cy, w, h as fractions of the image size
    size: np.ndarray  # float32 [N, 2]: image width, height in pixels
    annotated: bool = True

    def collate(self, indices: list[int]) -> GroundingTargetsBatch:
        idx = np.asarray(indices)
        return GroundingTargetsBatch(
            region_id=torch.from_numpy(self.region_id[idx]),
            image_id=torch.from_numpy(self.image_id[idx]),
            box=torch.from_numpy(self.box[idx]),
            image_size=torch.from_numpy(self.size[idx]),
        )


class BoxHead(nn.Module):
    """Points at the phrase's object, then refines: the pooled image-phrase vector scores every vision token of
    the encoder's H×W grid, the box centre is the score-weighted mean of the cells' centres (a soft arg-max, so
    localisation is learnt as "which cell", not as raw coordinates) plus a bounded offset, and the width and
    height come from an MLP over the pooled vector and the attended tokens. Output: cx, cy, w, h in [0, 1]."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.query, self.key = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.refine = mlp(2 * dim, hidden, 4, dropout)

    def forward(self, pooled: torch.Tensor, vision: Tokens) -> torch.Tensor:
        if vision.grid is None:
            raise ConfigError(
                "task=grounding points into the image's grid of tokens, and this vision encoder's tokens have no "
                "spatial grid; use a CNN or ViT encoder (vision=tiny_cnn, resnet18, vit_b16 …)"
            )
        grid = vision.grid_tokens()  # the H×W grid, after any [CLS]-like token
        height, width = vision.grid
        scores = (self.key(grid.feats) @ self.query(pooled).unsqueeze(-1)).squeeze(-1) / math.sqrt(pooled.shape[-1])
        weights = scores.float().masked_fill(~grid.mask, -torch.inf).softmax(-1)
        xs = (torch.arange(width, device=pooled.device, dtype=torch.float32) + 0.5) / width
        ys = (torch.arange(height, device=pooled.device, dtype=torch.float32) + 0.5) / height
        centres = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)  # row-major x, y
        centre = weights @ centres
        attended = (weights.unsqueeze(-1) * grid.feats.float()).sum(1)
        out = self.refine(torch.cat([pooled.float(), attended], dim=-1).to(pooled.dtype)).float()
        offset = torch.tanh(out[:, :2])  # at most one cell away from the pointed centre
        xy = (centre + torch.stack([offset[:, 0] / width, offset[:, 1] / height], dim=-1)).clamp(0, 1)
        return torch.cat([xy, torch.sigmoid(out[:, 2:])], dim=-1)


def drop_ambiguous_phrases(table: pa.Table) -> pa.Table:
    """Rows whose phrase names one region of its image (a phrase that two boxes of the image share has no single
    right answer)."""
    key = pc.binary_join_element_wise(pc.cast(table.column("image_id"), pa.string()), table.column("phrase"), "\x1f")
    counts = pc.value_counts(key)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    return table.filter(pc.invert(pc.is_in(key, value_set=repeated)))


class GroundingTask(Task):
    """Predicts the phrase's box (normalised cx, cy, w, h) with a `BoxHead` over the fused image-phrase vector and
    the vision tokens, trained with L1 + GIoU loss (the DETR / MDETR box losses). Images are resized without
    cropping, so normalised boxes stay valid."""

    name = "grounding"
    table_kind = "regions"
    epochs = 13  # default budget (trainer.max_epochs=null), measured in the README
    allows_random_crop = False
    sample_legend = f"boxes: {PREDICTED} = predicted, {TRUE} = true; right = IoU at least task.iou_threshold"

    def __init__(
        self,
        *,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        iou_threshold: float = 0.5,
        drop_ambiguous: bool = True,
        head_hidden_mult: int = 2,
        dropout: float = 0.0,
    ) -> None:
        self.l1_weight, self.giou_weight = l1_weight, giou_weight
        self.iou_threshold, self.drop_ambiguous = iou_threshold, drop_ambiguous
        self.monitor_key = accuracy_key(iou_threshold)
        self.head_hidden_mult, self.dropout = head_hidden_mult, dropout

    def rows(self, table: pa.Table, *, train: bool) -> pa.Table:
        return drop_ambiguous_phrases(table) if self.drop_ambiguous else table

    def texts(self, table: pa.Table) -> list[str]:
        return table.column("phrase").to_pylist()

    def targets(self, table: pa.Table) -> GroundingTargets:
        xywh = np.asarray(table.column("box").to_pylist(), dtype=np.float32).reshape(-1, 4)
        size = np.stack([table.column(k).to_numpy() for k in ("width", "height")], axis=1).astype(np.float32)
        scale = np.concatenate([size, size], axis=1)
        cxcywh = np.concatenate([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], axis=1) / scale
        return GroundingTargets(
            region_id=table.column("region_id").to_numpy().astype(np.int64),
            image_id=table.column("image_id").to_numpy().astype(np.int64),
            box=cxcywh.astype(np.float32),
            size=size,
        )

    def build_head(self, dim: int) -> nn.Module:
        return BoxHead(dim, self.head_hidden_mult * dim, self.dropout)

    def forward(self, model: VisionLanguageModel, batch: Batch) -> BoxOutputs:
        vision, text = model.encode(batch.images, batch.input_ids, batch.attention_mask, batch.image_index)
        fused = model.fusion(vision, text)
        return BoxOutputs(model.heads[self.name](fused.pooled, vision))

    def loss(self, outputs: BoxOutputs, batch: Batch) -> torch.Tensor:
        predicted, target = outputs.box, batch.targets.box
        l1 = F.l1_loss(predicted, target, reduction="none").sum(1).mean()
        giou = generalized_box_iou_loss(cxcywh_to_xyxy(predicted), cxcywh_to_xyxy(target), reduction="mean")
        return self.l1_weight * l1 + self.giou_weight * giou

    def make_metric(self) -> GroundingAccuracy:
        return GroundingAccuracy(self.iou_threshold)

    def update_metric(self, metric: GroundingAccuracy, outputs: BoxOutputs, batch: Batch) -> None:
        # IoU is scale-invariant only per axis pair, so score in pixels: non-square images count as they look.
        targets: GroundingTargetsBatch = batch.targets
        scale = targets.image_size.repeat(1, 2)
        metric.update(cxcywh_to_xyxy(outputs.box) * scale, cxcywh_to_xyxy(targets.box) * scale)

    def sample_notes(self, outputs: BoxOutputs, batch: Batch, count: int) -> list[SampleNote]:
        # Images are shown resized to a square, so boxes in [0, 1] of the image land where they belong.
        targets: GroundingTargetsBatch = batch.targets
        predicted, target = cxcywh_to_xyxy(outputs.box[:count]).float(), cxcywh_to_xyxy(targets.box[:count])
        scale = targets.image_size[:count].repeat(1, 2)
        iou = paired_box_iou(predicted * scale, target * scale)
        return [
            SampleNote(
                int(batch.image_index[i]),
                [batch.texts[i], f"IoU {float(iou[i]):.2f}"],
                [(predicted[i].tolist(), PREDICTED), (target[i].tolist(), TRUE)],
                verdict="right" if float(iou[i]) >= self.iou_threshold else "wrong",
                row=i,
            )
            for i in range(len(predicted))
        ]

    def predictions(self, outputs: BoxOutputs, batch: Batch) -> list[dict[str, Any]]:
        targets: GroundingTargetsBatch = batch.targets
        return [
            {"region_id": int(r), "image_id": int(i), "box": list(box)}
            for r, i, box in zip(targets.region_id.tolist(), targets.image_id.tolist(), pixel_boxes(outputs, targets))
        ]

    # -- prediction on a user's inputs (cmvl/tasks/prediction.py) --------------------------------------------
    predict_input = "phrase"

    def predict_results(self, outputs: BoxOutputs, batch: Batch, options: PredictOptions) -> list[BoxResult]:
        targets: PredictTargets = batch.targets
        return [BoxResult(self.name, phrase, box) for phrase, box in zip(batch.texts, pixel_boxes(outputs, targets))]


def pixel_boxes(outputs: BoxOutputs, targets: GroundingTargetsBatch | PredictTargets) -> list[tuple[float, ...]]:
    """Each predicted box as x, y, width, height in pixels of its image (rounded to 0.01: the results format)."""
    xyxy = (cxcywh_to_xyxy(outputs.box.float()) * targets.image_size.repeat(1, 2)).cpu()
    return [
        tuple(round(v, 2) for v in (b[0].item(), b[1].item(), (b[2] - b[0]).item(), (b[3] - b[1]).item())) for b in xyxy
    ]
