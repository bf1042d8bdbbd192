"""What a task answers for a user's own inputs (`cmvl predict`, `Run.predict`): the options, the targets record of a
batch that has no ground truth, and the typed results each task returns.

A task takes part in prediction through two hooks of `Task` (cmvl/tasks/base.py): `predict_input`, the request
field that carries a sample's text ("question", "phrase"; None for an image-only task), and `predict_results`,
which turns the outputs of `predict_forward` into one result per sample. A task without `predict_results` is
refused by `cmvl predict` in one line. A task whose queries are free text (detection: `predict_queries`) also
takes a request's own `queries`; otherwise a batch carries the task's own (`Task.query_texts`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image

from cmvl.batch import TensorRecord


@dataclass(frozen=True)
class PredictOptions:
    """How results are made; None = the task's own setting from the checkpoint's config."""

    top_k: int | None = None  # how many answers / classes / boxes are listed, best first (None: VQA 5, ...)
    threshold: float | None = None  # tagging / detection: the score from which a label / box is given

    def top(self, default: int) -> int:
        """`top_k`, or the task's `default` where none was given."""
        return default if self.top_k is None else self.top_k

    beam_size: int | None = None  # captioning, generative VQA: beam width (task.beam_size)
    seed: int = 0  # generation: the seed of the noise every prompt's image starts from


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

    def drawn_boxes(self) -> list[tuple[tuple[float, float, float, float], str]] | None:
        """The boxes `draw=` draws on the image (x, y, w, h in its pixels, with their labels); None: a result of a
        task that gives no boxes."""
        return None


@dataclass(frozen=True)
class RankedResult(Result):
    """Labels ranked best first, each with its score: VQA's answers and a classifier's classes. One shape, two sets
    of names, both public (`result.answers` / `.answer`, `result.classes` / `.label`, and the same keys in predict's
    records), so each subclass names its list field (`RANKED`) and the record key of the best label (`BEST`)."""

    RANKED: ClassVar[str]
    BEST: ClassVar[str]

    def ranked(self) -> list[ScoredLabel]:
        return getattr(self, self.RANKED)

    def to_json(self) -> dict[str, Any]:
        ranked = self.ranked()
        return {"task": self.task, self.BEST: ranked[0].label, self.RANKED: [asdict(a) for a in ranked]}

    def lines(self) -> list[str]:
        return [_scored(a) for a in self.ranked()]


@dataclass(frozen=True)
class AnswerResult(RankedResult):
    """VQA: the most probable answers, best first. A classifier's scores are its sigmoid outputs (each answer's
    predicted VQA score, trained with BCE on the soft scores: they need not sum to 1); a written answer has none."""

    RANKED, BEST = "answers", "answer"
    answers: list[ScoredLabel] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return self.answers[0].label


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

    def drawn_boxes(self) -> list[tuple[tuple[float, float, float, float], str]]:
        return [(self.box, self.phrase)]


@dataclass(frozen=True)
class Detection:
    """One detected object: its query's text, the model's probability and its box (x, y, w, h in pixels of the
    image as given, the COCO results format)."""

    label: str
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class DetectionsResult(Result):
    """Detection: the boxes scored at or above the threshold, best first (at most top_k), for the queries asked."""

    detections: list[Detection] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    threshold: float = 0.0

    def lines(self) -> list[str]:
        rows = [
            f"{d.score:.4f}  {d.label}  x={d.box[0]:g} y={d.box[1]:g} w={d.box[2]:g} h={d.box[3]:g}"
            for d in self.detections
        ]
        return rows or [f"(no box scores {self.threshold} or more for {', '.join(self.queries)})"]

    def drawn_boxes(self) -> list[tuple[tuple[float, float, float, float], str]]:
        return [(d.box, f"{d.label} {d.score:.2f}") for d in self.detections]


@dataclass(frozen=True)
class GeneratedImage(Result):
    """Generation: the image drawn for the prompt (`pixels`, uint8 3×H×W) and, once a command wrote it, its file."""

    prompt: str = ""
    pixels: torch.Tensor | None = field(default=None, repr=False, compare=False)
    path: str | None = None

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels.permute(1, 2, 0).cpu().numpy())

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "prompt": self.prompt, "image": self.path}

    def lines(self) -> list[str]:
        return [f"{self.path or '(not written)'}  {self.prompt!r}"]


@dataclass(frozen=True)
class ClassesResult(RankedResult):
    """Classification: the most probable classes, best first, with their softmax probabilities."""

    RANKED, BEST = "classes", "label"
    classes: list[ScoredLabel] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.classes[0].label


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
