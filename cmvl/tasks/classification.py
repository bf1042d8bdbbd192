"""Single-label image classification (an ImageFolder, the shapes world's majority class): a linear head on the
pooled vision tokens, or class names through the text encoder scored by cosine similarity."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cmvl.batch import Batch, TensorRecord
from cmvl.columns import schema_json
from cmvl.errors import ConfigError, DataError
from cmvl.metrics.classification import ClassificationMetrics
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.tasks.base import SampleNote, SplitTargets, Task
from cmvl.tasks.prediction import ClassesResult, PredictOptions, ScoredLabel
from cmvl.tasks.retrieval import DualEncoderHead

HEADS = ("linear", "text")


@dataclass
class ClassTargetsBatch(TensorRecord):
    image_id: torch.Tensor  # B int64
    label: torch.Tensor  # B int64: the true class
    image: list[str]  # the B image files (the predictions file names them)


@dataclass
class ClassLogits(TensorRecord):
    logits: torch.Tensor  # B×C: one score per class


@dataclass
class ClassTargets(SplitTargets):
    image_id: np.ndarray  # int64 [N]
    label: np.ndarray  # int64 [N]
    image: np.ndarray  # str [N]
    annotated: bool = True

    def collate(self, indices: list[int]) -> ClassTargetsBatch:
        idx = np.asarray(indices)
        return ClassTargetsBatch(
            torch.from_numpy(self.image_id[idx]), torch.from_numpy(self.label[idx]), self.image[idx].tolist()
        )


def cosine_logits(image_emb: torch.Tensor, class_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """U×C scores: scale × cosine similarity of each image embedding with each class embedding."""
    return scale * F.normalize(image_emb.float(), dim=-1) @ F.normalize(class_emb.float(), dim=-1).T


class ClassificationTask(Task):
    """One class per image, from the `classes` table. `head=linear`: a linear layer on the pooled vision tokens
    (vision encoder only). `head=text`: the class names go through the text encoder once per batch (the batch's
    shared `queries`), and an image's score for a class is the scaled cosine similarity of their embeddings, so
    the classifier's weights are what the text encoder makes of the names. Cross-entropy (with
    `label_smoothing`); top-1 / top-5 accuracy and a confusion-matrix picture per validation epoch."""

    name = "classification"
    table_kind = "classes"
    epochs = 10  # default budget (trainer.max_epochs=null), measured in the README
    monitor_key = "top1"

    def __init__(
        self,
        *,
        head: str = "linear",
        embed_dim: int = 128,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        label_smoothing: float = 0.0,
        top_k: int = 5,
    ) -> None:
        if head not in HEADS:
            raise ConfigError(f"task.head={head}: choose one of {', '.join(HEADS)}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"task.label_smoothing={label_smoothing}: must be in [0, 1)")
        if top_k < 1:
            raise ConfigError(f"task.top_k={top_k}: must be at least 1")
        self.head, self.embed_dim = head, embed_dim
        self.temperature, self.learn_temperature = temperature, learn_temperature
        self.label_smoothing, self.top_k = label_smoothing, top_k
        self.parts = frozenset({"vision", "text"} if head == "text" else {"vision"})
        self.classes: list[str] = []

    def fit(self, train_table: pa.Table) -> None:
        self.classes = table_classes(train_table)
        if len(self.classes) < 2:
            raise DataError(f"the classes table has {len(self.classes)} class(es); classification needs at least 2")

    def state_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.classes = list(state["classes"])

    def texts(self, table: pa.Table) -> None:
        return None  # image-only samples: nothing is tokenised per image

    def query_texts(self) -> list[str] | None:
        return list(self.classes) if self.head == "text" else None

    def targets(self, table: pa.Table) -> ClassTargets:
        classes = table_classes(table)
        if classes != self.classes:
            raise DataError(
                f"the split's classes ({', '.join(classes[:5])}{', …' if len(classes) > 5 else ''}) are not the "
                f"{len(self.classes)} classes the model was trained on ({', '.join(self.classes[:5])}"
                f"{', …' if len(self.classes) > 5 else ''})"
            )
        return ClassTargets(
            image_id=table.column("image_id").to_numpy().astype(np.int64),
            label=table.column("label").to_numpy().astype(np.int64),
            image=table.column("image").to_numpy(zero_copy_only=False).astype(str),
        )

    def build_head(self, dim: int) -> nn.Module:
        if self.head == "text":
            # The retrieval task's head without matching: image and class-name projections, a learnt scale.
            return DualEncoderHead(dim, self.embed_dim, self.temperature, self.learn_temperature, itm=False)
        return nn.Linear(dim, len(self.classes))

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ClassLogits:
        head = model.heads[self.name]
        pooled = model.encode_images(batch.images).pooled_mean()  # U distinct images
        if self.head == "linear":
            return ClassLogits(head(pooled)[batch.image_index])
        queries = batch.queries
        names = model.encode_texts(queries.input_ids, queries.attention_mask).pooled_mean()  # C class names
        scale = head.log_scale.exp().clamp(max=100.0)
        return ClassLogits(cosine_logits(head.image_proj(pooled), head.text_proj(names), scale)[batch.image_index])

    def loss(self, outputs: ClassLogits, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(outputs.logits.float(), batch.targets.label, label_smoothing=self.label_smoothing)

    def make_metric(self) -> ClassificationMetrics:
        return ClassificationMetrics(max(len(self.classes), 1), top_k=self.top_k)

    def update_metric(self, metric: ClassificationMetrics, outputs: ClassLogits, batch: Batch) -> None:
        metric.update(outputs.logits, batch.targets.label)

    def predictions(self, outputs: ClassLogits, batch: Batch) -> list[dict[str, Any]]:
        return class_predictions(outputs.logits, batch.targets, self.classes, self.top_k)

    def sample_notes(self, outputs: ClassLogits, batch: Batch, count: int) -> list[SampleNote]:
        records = self.predictions(outputs, batch)[:count]
        truth = batch.targets.label.tolist()
        return [
            SampleNote(
                int(batch.image_index[i]), [f"pred: {r['label']} ({r['score']:.2f})", f"true: {self.classes[t]}"]
            )
            for i, (r, t) in enumerate(zip(records, truth))
        ]

    def epoch_pictures(self, metric: ClassificationMetrics) -> dict[str, Image.Image]:
        return {"confusion": confusion_picture(metric.confusion_matrix(), self.classes)}

    # -- prediction on a user's inputs (cmvl/tasks/prediction.py): image only --------------------------------
    def predict_results(self, outputs: ClassLogits, batch: Batch, options: PredictOptions) -> list[ClassesResult]:
        """The `options.top_k` (else `task.top_k`) most probable classes, ranked as evaluation's predictions file."""
        probs = outputs.logits.float().softmax(dim=-1).cpu()
        top = probs.topk(min(options.top(self.top_k), probs.shape[1]), dim=-1)
        return [
            ClassesResult(self.name, [ScoredLabel(self.classes[int(j)], round(float(p), 6)) for p, j in zip(ps, js)])
            for ps, js in zip(top.values, top.indices)
        ]


def table_classes(table: pa.Table) -> list[str]:
    """The class names a `classes` table's labels index (its schema metadata)."""
    names = schema_json(table, "classes")
    if names is None:
        raise DataError("the classes table names no classes (schema metadata 'classes')")
    return json.loads(names)


def class_predictions(
    logits: torch.Tensor, targets: ClassTargetsBatch, classes: list[str], top_k: int
) -> list[dict[str, Any]]:
    """One record per image: its id and file, the predicted class with its softmax probability, and the `top_k`
    classes best first."""
    probs = logits.float().softmax(dim=-1).cpu()
    top = probs.topk(min(top_k, probs.shape[1]), dim=-1)
    return [
        {
            "image_id": int(image_id),
            "image": image,
            "label": classes[int(indices[0])],
            "score": round(float(values[0]), 6),
            "top_k": [classes[int(j)] for j in indices],
        }
        for image_id, image, values, indices in zip(targets.image_id.tolist(), targets.image, top.values, top.indices)
    ]


def confusion_picture(confusion: torch.Tensor, classes: list[str]) -> Image.Image:
    """The confusion matrix as a picture: rows are true classes, columns predicted, each row coloured by its share
    (so rare classes read as clearly as common ones), with the counts written in the cells when they fit."""
    from cmvl.figures import pyplot

    plt = pyplot()
    counts = confusion.cpu().numpy()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.35 * len(classes), 20)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=90, fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top1 = counts.trace() / max(counts.sum(), 1)
    ax.set_title(f"confusion matrix: {int(counts.sum())} images, top-1 {top1:.3f}")
    if len(classes) <= 30:
        for (row, column), count in np.ndenumerate(counts):
            colour = "white" if shares[row, column] > 0.5 else "black"
            ax.text(column, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
