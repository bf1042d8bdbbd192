"""Multi-label tagging: which object categories an image shows (COCO instances, Visual Genome objects, shapes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from cmvl.batch import Batch, TensorRecord
from cmvl.columns import list_column, schema_json
from cmvl.errors import ConfigError, DataError
from cmvl.metrics.tagging import TaggingMetrics
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.fusion.base import mlp
from cmvl.tasks.base import SampleNote, SplitTargets, Task
from cmvl.tasks.prediction import PredictOptions, ScoredLabel, TagsResult

LOSSES = ("bce", "asymmetric")


def asymmetric_loss(
    logits: torch.Tensor, target: torch.Tensor, *, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05
) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al., ICCV 2021) summed over labels, mean over images: easy negatives are
    down-weighted by p^gamma_neg and probabilities below `clip` are shifted to zero, which suits the many
    negatives of multi-label data. With gamma_neg = gamma_pos = clip = 0 it is the BCE."""
    p = torch.sigmoid(logits)
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p
    log_pos = F.logsigmoid(logits)
    log_neg = torch.log((1 - p_neg).clamp(min=1e-8))
    loss = target * log_pos * (1 - p).pow(gamma_pos) + (1 - target) * log_neg * p_neg.pow(gamma_neg)
    return -loss.sum() / logits.shape[0]


@dataclass
class TaggingTargetsBatch(TensorRecord):
    image_id: torch.Tensor  # B int64
    labels: torch.Tensor  # B×C float32: 1 where the image shows category c


@dataclass
class TagLogits(TensorRecord):
    logits: torch.Tensor  # B×C: one logit per category


@dataclass
class TaggingTargets(SplitTargets):
    image_id: np.ndarray  # int64 [N]
    offsets: np.ndarray  # int64 [N+1]
    labels: np.ndarray  # int64 [nnz]
    num_labels: int
    annotated: bool = True

    def collate(self, indices: list[int]) -> TaggingTargetsBatch:
        idx = np.asarray(indices)
        dense = np.zeros((len(idx), self.num_labels), dtype=np.float32)
        for row, i in enumerate(idx):
            dense[row, self.labels[self.offsets[i] : self.offsets[i + 1]]] = 1.0
        return TaggingTargetsBatch(image_id=torch.from_numpy(self.image_id[idx]), labels=torch.from_numpy(dense))


class TaggingTask(Task):
    """Predicts every category present in the image from its pooled vision tokens (no text input)."""

    name = "tagging"
    table_kind = "objects"
    epochs = 13  # default budget (trainer.max_epochs=null), measured in the README
    monitor_key = "mAP"
    parts = frozenset({"vision"})

    def __init__(
        self,
        *,
        loss: str = "asymmetric",
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        threshold: float = 0.5,
        top_k: int = 3,
        head_hidden_mult: int = 2,
        dropout: float = 0.0,
    ) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"task.loss={loss}: choose one of {', '.join(LOSSES)}")
        self.loss_name, self.gamma_neg, self.gamma_pos, self.clip = loss, gamma_neg, gamma_pos, clip
        self.threshold, self.top_k = threshold, top_k
        self.head_hidden_mult, self.dropout = head_hidden_mult, dropout
        self.categories: list[str] = []

    def fit(self, train_table: pa.Table) -> None:
        categories = schema_json(train_table, "categories")
        if categories is None:
            raise DataError("the objects table names no categories (schema metadata 'categories')")
        self.categories = json.loads(categories)
        if not self.categories:
            raise DataError("the objects table has no categories to tag")

    def state_dict(self) -> dict[str, Any]:
        return {"categories": list(self.categories)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.categories = list(state["categories"])

    def texts(self, table: pa.Table) -> None:
        return None  # image-only: the batches carry no text

    def targets(self, table: pa.Table) -> TaggingTargets:
        offsets, labels = list_column(table, "labels")
        return TaggingTargets(
            image_id=table.column("image_id").to_numpy().astype(np.int64),
            offsets=offsets,
            labels=labels.astype(np.int64),
            num_labels=len(self.categories),
        )

    def build_head(self, dim: int) -> nn.Module:
        return mlp(dim, self.head_hidden_mult * dim, len(self.categories), self.dropout)

    def forward(self, model: VisionLanguageModel, batch: Batch) -> TagLogits:
        pooled = model.encode_images(batch.images).pooled_mean()
        return TagLogits(model.heads[self.name](pooled)[batch.image_index])

    def loss(self, outputs: TagLogits, batch: Batch) -> torch.Tensor:
        logits, target = outputs.logits.float(), batch.targets.labels
        if self.loss_name == "bce":
            return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.shape[0]
        return asymmetric_loss(logits, target, gamma_neg=self.gamma_neg, gamma_pos=self.gamma_pos, clip=self.clip)

    def make_metric(self) -> TaggingMetrics:
        return TaggingMetrics(len(self.categories), threshold=self.threshold, top_k=self.top_k)

    def update_metric(self, metric: TaggingMetrics, outputs: TagLogits, batch: Batch) -> None:
        metric.update(torch.sigmoid(outputs.logits.float()), batch.targets.labels)

    def sample_notes(self, outputs: TagLogits, batch: Batch, count: int) -> list[SampleNote]:
        notes = []
        for i, record in enumerate(self.predictions(outputs, batch)[:count]):
            truth = [self.categories[j] for j in batch.targets.labels[i].nonzero().flatten().tolist()]
            predicted = set(record["labels"])
            verdict = "right" if predicted == set(truth) else "partly right" if predicted & set(truth) else "wrong"
            notes.append(
                SampleNote(
                    int(batch.image_index[i]),
                    [f"pred: {', '.join(record['labels']) or '-'}", f"true: {', '.join(truth) or '-'}"],
                    verdict=verdict,
                )
            )
        return notes

    def predictions(self, outputs: TagLogits, batch: Batch) -> list[dict[str, Any]]:
        probs = torch.sigmoid(outputs.logits.float()).cpu()
        records = []
        for image_id, row in zip(batch.targets.image_id.tolist(), probs):
            chosen = (row >= self.threshold).nonzero().flatten().tolist()
            records.append(
                {
                    "image_id": int(image_id),
                    "labels": [self.categories[j] for j in chosen],
                    "scores": {name: round(float(p), 6) for name, p in zip(self.categories, row)},
                }
            )
        return records

    # -- prediction on a user's inputs (cmvl/tasks/prediction.py): image only --------------------------------
    def predict_results(self, outputs: TagLogits, batch: Batch, options: PredictOptions) -> list[TagsResult]:
        """The labels scored at or above the threshold (`options.threshold`, else `task.threshold`), best first."""
        threshold = self.threshold if options.threshold is None else float(options.threshold)
        results = []
        for row in torch.sigmoid(outputs.logits.float()).cpu():
            scores = {name: round(float(p), 6) for name, p in zip(self.categories, row)}
            values, order = row.sort(descending=True, stable=True)
            chosen = [ScoredLabel(self.categories[j], scores[self.categories[j]]) for j in order[values >= threshold]]
            results.append(TagsResult(self.name, chosen, scores, threshold))
        return results
