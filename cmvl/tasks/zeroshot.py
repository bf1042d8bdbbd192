"""Zero-shot classification with a trained image-text dual encoder (a retrieval run): each class is the mean of its
prompts' text embeddings ("a picture of a {}.", ...), each image goes to the class its embedding is most similar to
(the CLIP / OpenCLIP recipe). Nothing is trained; `cmvl eval ckpt=<retrieval> task=zeroshot` runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from cmvl.batch import Batch
from cmvl.errors import ConfigError, DataError
from cmvl.metrics.classification import ClassificationMetrics
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.tasks.base import Task
from cmvl.tasks.classification import ClassLogits, ClassTargets, class_predictions, cosine_logits, table_classes

# Prompt templates in the spirit of CLIP's ImageNet ensemble, in words a caption-trained text encoder may know:
# generic phrasings ("a photo of a {}.") and the plain name, as CLIP's and OpenCLIP's shorter lists have them.
BUILTIN_TEMPLATES = (
    "a {}.",
    "a photo of a {}.",
    "a picture of a {}.",
    "a picture with a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "there is a {} in the picture.",
    "a {} on a gray background.",
    "a single {}.",
    "{}",
)


def read_templates(choice: str) -> list[str]:
    """`builtin`, or a text file with one template per line (blank lines and `#` comments skipped), each with one
    `{}` where the class name goes."""
    if choice == "builtin":
        return list(BUILTIN_TEMPLATES)
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ConfigError(f"templates={choice}: neither 'builtin' nor a file (one prompt template per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"templates={choice}: cannot read it as UTF-8 text ({type(err).__name__})") from None
    templates = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not templates:
        raise ConfigError(f"templates={choice}: the file holds no template (one per line, e.g. 'a photo of a {{}}.')")
    for number, template in enumerate(templates, 1):
        if template.count("{}") != 1 or template.count("{") != 1 or template.count("}") != 1:
            raise ConfigError(f"templates={choice}: template {number} '{template}' must hold exactly one {{}}")
    return templates


def unknown_classes(tokenizer: Any, classes: list[str]) -> list[str]:
    """The class names the tokenizer turns into nothing but unknown tokens (or nothing at all): their prompts would
    all embed alike, whatever the class."""
    unknown_id = tokenizer.unk_token_id
    bad = []
    for name in classes:
        ids = tokenizer(name, add_special_tokens=False)["input_ids"]
        if all(i == unknown_id for i in ids):
            bad.append(name)
    return bad


class ZeroShotTask(Task):
    """Scores each image of a `classes` table against `classes` × `templates` prompts through a dual encoder's head
    (`head`: the retrieval task's name in the model). Evaluation only: there is no loss to train."""

    name = "zeroshot"
    table_kind = "classes"
    epochs = 0
    monitor_key = "top1"
    parts = frozenset({"vision", "text"})

    def __init__(self, *, classes: list[str], templates: list[str], head: str = "retrieval", top_k: int = 5) -> None:
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ConfigError(f"classes={list(classes)}: give at least two distinct class names")
        self.classes, self.templates, self.head, self.top_k = list(classes), list(templates), head, top_k

    def texts(self, table: pa.Table) -> None:
        return None

    def query_texts(self) -> list[str]:
        """Every prompt, class by class: class c's are rows c·T … c·T+T-1."""
        return [template.format(name) for name in self.classes for template in self.templates]

    def targets(self, table: pa.Table) -> ClassTargets:
        names = table_classes(table)
        position = np.array([self.classes.index(n) if n in self.classes else -1 for n in names], dtype=np.int64)
        labels = position[table.column("label").to_numpy().astype(np.int64)]
        if (labels < 0).any():
            missing = sorted({names[i] for i in table.column("label").to_numpy()[labels < 0]})
            raise DataError(
                f"classes={self.classes}: the split's images include class '{missing[0]}' "
                f"({len(missing)} class(es) not listed); list every class of the split (it has: {', '.join(names)})"
            )
        return ClassTargets(
            image_id=table.column("image_id").to_numpy().astype(np.int64),
            label=labels,
            image=table.column("image").to_numpy(zero_copy_only=False).astype(str),
        )

    def build_head(self, dim: int) -> nn.Module:
        raise TypeError("zero-shot classification uses the dual encoder's trained head")

    def class_embeddings(self, model: VisionLanguageModel, batch: Batch) -> torch.Tensor:
        """C×E: each class's prompt embeddings (L2-normalised), averaged, normalised again."""
        head = model.heads[self.head]
        queries = batch.queries
        prompts = head.text_proj(model.encode_texts(queries.input_ids, queries.attention_mask).pooled_mean())
        prompts = F.normalize(prompts.float(), dim=-1).view(len(self.classes), len(self.templates), -1)
        return F.normalize(prompts.mean(dim=1), dim=-1)

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ClassLogits:
        head = model.heads[self.head]
        images = head.image_proj(model.encode_images(batch.images).pooled_mean())
        scale = head.log_scale.exp().clamp(max=100.0)
        return ClassLogits(cosine_logits(images, self.class_embeddings(model, batch), scale)[batch.image_index])

    def loss(self, outputs: ClassLogits, batch: Batch) -> torch.Tensor:
        raise TypeError("zero-shot classification is evaluated, not trained")

    def make_metric(self) -> ClassificationMetrics:
        return ClassificationMetrics(len(self.classes), top_k=self.top_k)

    def update_metric(self, metric: ClassificationMetrics, outputs: ClassLogits, batch: Batch) -> None:
        metric.update(outputs.logits, batch.targets.label)

    def predictions(self, outputs: ClassLogits, batch: Batch) -> list[dict[str, Any]]:
        return class_predictions(outputs.logits, batch.targets, self.classes, self.top_k)
