"""`VQAAccuracy`: the official VQA v2 accuracy as a DDP-synced torchmetrics metric."""

from __future__ import annotations

import torch
from torchmetrics import Metric

ANSWER_TYPES = ("yes/no", "number", "other")


def answer_type_index(answer_type: str | None) -> int:
    """Index into `ANSWER_TYPES`, -1 for a missing or unknown type (counted overall only)."""
    return ANSWER_TYPES.index(answer_type) if answer_type in ANSWER_TYPES else -1


class VQAAccuracy(Metric):
    """Mean official per-question score, overall and per answer type.

    `update` takes each question's official score (see `cmvl.metrics.vqa_normalize`) as a tensor, so the
    states are plain sums that synchronise across ranks; float64 keeps the sums exact to 1e-12.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        n = len(ANSWER_TYPES)
        self.add_state("type_score_sum", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("type_count", torch.zeros(n, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, answer_types: torch.Tensor) -> None:
        scores = scores.to(torch.float64)
        self.score_sum += scores.sum()
        self.count += scores.numel()
        known = answer_types >= 0
        self.type_score_sum.index_add_(0, answer_types[known], scores[known])
        self.type_count.index_add_(0, answer_types[known], torch.ones_like(answer_types[known]))

    @property
    def names(self) -> list[str]:
        """Every key `compute` can return (a per-type key only when the split has questions of that type)."""
        return ["acc", *(_type_key(t) for t in ANSWER_TYPES)]

    def compute(self) -> dict[str, torch.Tensor]:
        result = {"acc": self.score_sum / self.count.clamp_min(1)}
        for i, name in enumerate(ANSWER_TYPES):
            if self.type_count[i] > 0:
                result[_type_key(name)] = self.type_score_sum[i] / self.type_count[i]
        return result


def _type_key(answer_type: str) -> str:
    return f"acc_{answer_type.replace('/', '_')}"
