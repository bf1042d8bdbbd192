"""`ClassificationMetrics`: single-label top-1 / top-k accuracy and the confusion matrix, as summed DDP states."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix


class ClassificationMetrics(Metric):
    """Sums, over the images it is updated with (and across ranks), the confusion matrix (true class × predicted
    class, torchmetrics) and how many images have their class among the `top_k` highest scores (torchmetrics'
    top-k accuracy times the batch size):

    - `top1`: the share of images whose highest-scored class is right (the confusion matrix's trace / total);
    - `top5`: the share whose class is among the `top_k` (default 5) highest scores; with fewer classes than
      that it is among all of them, i.e. 1 (the key keeps its name so every run logs the same keys).
    """

    full_state_update = False
    higher_is_better = True
    names = ["top1", "top5"]  # the keys of `compute`

    def __init__(self, num_classes: int, *, top_k: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.top_k = num_classes, max(1, min(top_k, num_classes))
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("top_k_correct", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """`scores`: B×C (logits or probabilities), `target`: B class indices."""
        scores, target = scores.detach().float(), target.detach().to(torch.int64)
        if not len(target):
            return
        self.confusion += multiclass_confusion_matrix(scores, target, self.num_classes)
        top_k = multiclass_accuracy(scores, target, self.num_classes, top_k=self.top_k, average="micro")
        self.top_k_correct += top_k.double() * len(target)
        self.total += len(target)

    def compute(self) -> dict[str, torch.Tensor]:
        if not int(self.total):
            nan = torch.tensor(float("nan"))
            return dict.fromkeys(self.names, nan)
        total = self.total.double()
        return {"top1": self.confusion.trace().double() / total, "top5": self.top_k_correct / total}

    def confusion_matrix(self) -> torch.Tensor:
        """The confusion matrix over every rank's updates (rows: true class, columns: predicted)."""
        with self.sync_context(should_sync=self.sync_on_compute):
            return self.confusion.clone()
