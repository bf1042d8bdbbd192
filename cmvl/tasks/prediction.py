"""What a task answers for a user's own inputs (`cmvl predict`, `Run.predict`): the options, the targets record of a
batch that has no ground truth, and the typed results each task returns.

A task takes part in prediction through two hooks of `Task` (cmvl/tasks/base.py): `predict_input`, the request
field that carries a sample's text ("question", "phrase"; None for an image-only task), and `predict_results`,
which turns the outputs of `predict_forward` into one result per sample. A task without `predict_results` is
refused by `cmvl predict` in one line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from cmvl.batch import TensorRecord


@dataclass(frozen=True)
class PredictOptions:
    """How results are made; None = the task's own setting from the checkpoint's config."""

    top_k: int = 5  # VQA: how many answers are listed, most probable first
    threshold: float | None = None  # tagging: the score from which a label is given (task.threshold)
    beam_size: int | None = None  # captioning, generative VQA: beam width (task.beam_size)


@dataclass
class PredictTargets(TensorRecord):
    """`Batch.targets` of a prediction batch: no ground truth, only what is known of each sample's input."""

    image_size: torch.Tensor  # B×2 float32: width, height of each sample's image as given (boxes are in its pixels)


@dataclass(frozen=True)
class ScoredLabel:
    """An answer or a label with the model's probability for it (None where the model gives none)."""

    label: str
    score: float | None


@dataclass(frozen=True)
class Result:
    """One sample's result; `task` is the (member) task that made it."""

    task: str

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON values (one line of a predictions file)."""
        return asdict(self)

    def lines(self) -> list[str]:
        """The result as `cmvl predict` prints it."""
        raise NotImplementedError


@dataclass(frozen=True)
class AnswerResult(Result):
    """VQA: the most probable answers, best first. A classifier's scores are its sigmoid outputs (each answer's
    predicted VQA score, trained with BCE on the soft scores: they need not sum to 1); a written answer has none."""

    answers: list[ScoredLabel] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return self.answers[0].label

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "answer": self.answer, "answers": [asdict(a) for a in self.answers]}

    def lines(self) -> list[str]:
        return [_scored(a) for a in self.answers]


@dataclass(frozen=True)
class CaptionResult(Result):
    caption: str = ""

    def lines(self) -> list[str]:
        return [self.caption or "(empty)"]


@dataclass(frozen=True)
class TagsResult(Result):
    """Tagging: the labels scored at or above the threshold (best first) and every category's score."""

    labels: list[ScoredLabel] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.5

    def lines(self) -> list[str]:
        return [_scored(a) for a in self.labels] or [f"(no label scores {self.threshold} or more)"]


@dataclass(frozen=True)
class BoxResult(Result):
    """Grounding: the box of the phrase's region, x, y, width, height in pixels of the image as given."""

    phrase: str = ""
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "phrase": self.phrase, "box": list(self.box)}

    def lines(self) -> list[str]:
        x, y, w, h = self.box
        return [f"box x={x:g} y={y:g} w={w:g} h={h:g} (pixels) for {self.phrase!r}"]


def _scored(item: ScoredLabel) -> str:
    return item.label if item.score is None else f"{item.score:.4f}  {item.label}"


def top_scored(labels: list[str], logits: torch.Tensor, k: int) -> list[list[ScoredLabel]]:
    """The `k` labels of highest logit in each row of `logits` (B×C), best first, each with its sigmoid
    probability. Ranked by logit, not by probability (a float sigmoid saturates and would tie distinct logits), and
    among equal logits the lower index first: the first is what evaluation's `argmax` picks."""
    values, indices = logits.float().cpu().sort(dim=1, descending=True, stable=True)
    probabilities = torch.sigmoid(values[:, :k])
    return [
        [ScoredLabel(labels[j], round(float(p), 6)) for p, j in zip(row_probabilities, row_indices[:k].tolist())]
        for row_probabilities, row_indices in zip(probabilities, indices)
    ]
