"""`TaggingMetrics`: multi-label tagging scores (mAP, F1 at a threshold, precision@k) as one DDP-synced metric."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import multilabel_average_precision, multilabel_f1_score


class TaggingMetrics(Metric):
    """Keeps every image's label probabilities and true labels (gathered across ranks), then computes:

    - `mAP`: mean over labels of average precision (torchmetrics, exact, no binning), over the labels that
      have at least one positive in the split (the COCO/VOC convention: an absent label has no defined AP);
    - `f1_micro`, `f1_macro` at `threshold` (macro over the same labels as mAP);
    - `precision_at_k`: the share of each image's `top_k` highest-scored labels that are true, averaged.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_labels: int, *, threshold: float = 0.5, top_k: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_labels, self.threshold, self.top_k = num_labels, threshold, min(top_k, num_labels)
        self.add_state("probs", [], dist_reduce_fx="cat")
        self.add_state("target", [], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.probs.append(probs.detach().float())
        self.target.append(target.detach().to(torch.int64))

    names = ["mAP", "f1_micro", "f1_macro", "precision_at_k"]  # the keys of `compute`

    def compute(self) -> dict[str, torch.Tensor]:
        probs = torch.cat(self.probs) if isinstance(self.probs, list) else self.probs
        target = torch.cat(self.target) if isinstance(self.target, list) else self.target
        present = target.sum(0) > 0
        if not bool(present.any()):
            nan = torch.tensor(float("nan"))
            return dict.fromkeys(self.names, nan)
        ap = multilabel_average_precision(probs, target, num_labels=self.num_labels, average=None)
        f1 = multilabel_f1_score(probs, target, num_labels=self.num_labels, threshold=self.threshold, average=None)
        micro = multilabel_f1_score(
            probs, target, num_labels=self.num_labels, threshold=self.threshold, average="micro"
        )
        top = probs.topk(self.top_k, dim=1).indices
        precision_at_k = target.gather(1, top).float().mean()
        return {
            "mAP": ap[present].mean(),
            "f1_micro": micro,
            "f1_macro": f1[present].mean(),
            "precision_at_k": precision_at_k,
        }
