"""Box geometry and the grounding metric (accuracy at IoU >= 0.5, mean IoU)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def paired_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i] (N×4 each, xyxy): the diagonal of `torchvision.ops.box_iou` without the N×N matrix."""
    top_left = torch.maximum(a[:, :2], b[:, :2])
    bottom_right = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a + area_b - inter).clamp_min(1e-12)


def accuracy_key(iou_threshold: float) -> str:
    return f"acc_iou{round(iou_threshold * 100)}"


class GroundingAccuracy(Metric):
    """`acc_iou<T>` (T = threshold in percent, `acc_iou50` by default): share of phrases whose predicted box has
    IoU >= `iou_threshold` with the true box (the phrase-grounding accuracy); `mean_iou`. Boxes xyxy, any frame."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, iou_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.iou_threshold = iou_threshold
        self.accuracy_key = accuracy_key(iou_threshold)
        self.add_state("hits", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("iou_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, predicted_xyxy: torch.Tensor, target_xyxy: torch.Tensor) -> None:
        iou = paired_box_iou(predicted_xyxy.float(), target_xyxy.float())
        self.hits += (iou >= self.iou_threshold).sum()
        self.iou_sum += iou.double().sum()
        self.count += iou.numel()

    @property
    def names(self) -> list[str]:
        return [self.accuracy_key, "mean_iou"]  # the keys of `compute`

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        return {self.accuracy_key: self.hits.double() / n, "mean_iou": self.iou_sum / n}
