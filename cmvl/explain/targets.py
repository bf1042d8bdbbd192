"""What the maps of each task explain: one differentiable score per sample, and what it is in words.

- VQA (answer classification): the logit of the predicted answer.
- Grounding: the box head's pointing score of the grid cell it points at (the box centre is the soft arg-max of
  these scores over the grid, `cmvl.tasks.grounding.BoxHead`), so the maps explain where the box is.
- Retrieval trained with `task.itm=true`: the image-text matching logit of the pair (the match).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cmvl.errors import ConfigError
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.tokens import Tokens
from cmvl.tasks.base import Task
from cmvl.tasks.grounding import GroundingTask
from cmvl.tasks.retrieval import RetrievalTask
from cmvl.tasks.vqa import VQATask

EXPLAINED_TASKS = "task=vqa, grounding or retrieval with task.itm=true"


@dataclass
class ExplainedOutput:
    """The explained score of every sample (B, on the autograd path) and what each sample's output is."""

    score: torch.Tensor
    titles: list[str]  # e.g. "answer: red (0.97)", for the pictures
    answers: list[str] | None = None  # VQA: the predicted answers
    boxes: torch.Tensor | None = None  # grounding: B×4 predicted boxes, x0 y0 x1 y1 in [0, 1] of the image


def check_explainable(task: Task) -> None:
    """`ConfigError` (one line) unless `task`'s outputs have maps (`explained_output` takes them)."""
    if isinstance(task, VQATask) and task.answer_mode != "classify":
        raise ConfigError(
            f"task.answer_mode={task.answer_mode}: cmvl explain explains classified answers (task.answer_mode=classify)"
        )
    if isinstance(task, RetrievalTask) and not task.itm:
        raise ConfigError(
            "task=retrieval without task.itm: its image and caption embeddings meet only in a dot product, with no "
            "attention between them to explain; explain a checkpoint trained with task.itm=true"
        )
    if not isinstance(task, VQATask | GroundingTask | RetrievalTask):
        raise ConfigError(f"task={task.name}: cmvl explain has maps for {EXPLAINED_TASKS}")


def explained_output(task: Task, model: VisionLanguageModel, vision: Tokens, text: Tokens) -> ExplainedOutput:
    """Runs the fusion and the task's head on `vision` (B rows, one per text) and `text`; the fusion records its
    attention on the way (`Fusion.record_attention`, set by the caller)."""
    check_explainable(task)
    fused = model.part("fusion")(vision, text)
    head = model.heads[task.name]
    if isinstance(task, VQATask):
        logits = head(fused.pooled)
        predicted = logits.argmax(dim=1)
        score = logits.gather(1, predicted[:, None]).squeeze(1)
        answers = [task.answers[j] for j in predicted.tolist()]
        titles = [f"answer: {a} ({p:.2f})" for a, p in zip(answers, torch.sigmoid(score).tolist())]
        return ExplainedOutput(score, titles, answers=answers)
    if isinstance(task, GroundingTask):
        box = head(fused.pooled, vision)  # cx, cy, w, h
        grid = vision.grid_tokens()
        # The head's own cell scores (BoxHead.forward), before their softmax: the pointed cell's is explained.
        cell_scores = (head.key(grid.feats) @ head.query(fused.pooled).unsqueeze(-1)).squeeze(-1)
        cell_scores = cell_scores / math.sqrt(fused.pooled.shape[-1])
        score = cell_scores.masked_fill(~grid.mask, -torch.inf).amax(dim=1)
        xyxy = torch.cat([box[:, :2] - box[:, 2:] / 2, box[:, :2] + box[:, 2:] / 2], dim=1).clamp(0, 1).detach()
        titles = [f"box ({', '.join(f'{v:.2f}' for v in b)})" for b in xyxy.tolist()]
        return ExplainedOutput(score, titles, boxes=xyxy)
    score = head.itm(fused.pooled).squeeze(-1)
    titles = [f"match logit {s:.2f} (p {p:.2f})" for s, p in zip(score.tolist(), torch.sigmoid(score).tolist())]
    return ExplainedOutput(score, titles)
