"""Knowledge distillation (`distill.teacher=CKPT`): a student learns from a trained teacher's logits.

The training loss becomes `(1 − alpha) · task loss + alpha · T² · KL(teacher_T ‖ student_T)` (Hinton et al.,
2015; `T` = `distill.temperature`, the T² keeping the soft term's gradients on the task loss's scale), plus
`distill.feature_weight` · the similarity-preserving feature loss (Tung & Mori, 2019): the mean squared difference
between the student's and the teacher's batch similarity matrices (cosine) of the features their heads read, which
compares a narrow student with a wide teacher without any extra weights to learn.

`KL` follows how the task's loss reads its logits: classification's softmax over classes; VQA's and tagging's
independent sigmoids (their losses are binary cross-entropies), as the sum over answers / categories of the
binary KL, averaged over the rows. Other tasks (captioning, retrieval, detection, grounding, generative VQA,
multitask) do not train logits over one shared vocabulary and are refused.

The teacher (loaded by `cmvl.distill.load_teacher`) is frozen and in eval mode, and `Distiller` is a plain
object, not a module: the teacher's weights are never part of the student's state, so never in its checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cmvl.batch import Batch, TensorRecord
from cmvl.errors import ConfigError
from cmvl.models.families.base import ModelFamily
from cmvl.tasks.base import Task

# Task name → (its task state's vocabulary, which indexes the logits; how its loss reads the logits)
DISTILLED_TASKS: dict[str, tuple[str, str]] = {
    "vqa": ("answers", "sigmoid"),
    "tagging": ("categories", "sigmoid"),
    "classification": ("classes", "softmax"),
}


def distillation_problem(task: Task) -> str | None:
    """Why `task` cannot be distilled (one line), or None."""
    members = task.members()
    names = ", ".join(sorted(DISTILLED_TASKS))
    if len(members) > 1 or task.name not in DISTILLED_TASKS:
        return (
            f"distill.teacher: task={task.name} is not distilled (its loss is not on one vocabulary's logits); "
            f"distillation trains task={names.replace(', ', ' / ')}"
        )
    if getattr(task, "answer_mode", "classify") != "classify":
        return (
            "distill.teacher: VQA writes its answers here (task.answer_mode=generate); distillation needs "
            "task.answer_mode=classify"
        )
    return None


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float, form: str) -> torch.Tensor:
    """T² · KL(teacher ‖ student) of the temperature-softened logits (rows × classes), averaged over the rows:
    over a softmax (`form="softmax"`) or summed over independent sigmoids (`"sigmoid"`)."""
    s, t = student.float() / temperature, teacher.float() / temperature
    if form == "softmax":
        kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="sum")
    else:
        p = torch.sigmoid(t)
        kl = (p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))).sum()
    return kl / max(student.shape[0], 1) * temperature**2


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving distillation: the mean squared difference of the rows' cosine-similarity matrices
    (each B×B whatever the features' widths)."""
    s, t = F.normalize(student.float().flatten(1), dim=1), F.normalize(teacher.float().flatten(1), dim=1)
    return ((s @ s.T - t @ t.T) ** 2).mean()


class HeadInput:
    """Keeps the last input of a task's head (the features it reads), through a forward pre-hook."""

    def __init__(self, head: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        head.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.value = args[0]

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise ConfigError(
                "distill.feature_weight: this task's head reads no features; set distill.feature_weight=0"
            )
        return value


@dataclass(frozen=True)
class Teacher:
    """A trained run's model and task (with its vocabulary), as `cmvl.distill.load_teacher` checked them."""

    model: ModelFamily
    task: Task


@dataclass(frozen=True)
class DistillSettings:
    temperature: float
    alpha: float
    feature_weight: float


class Distiller:
    """The distillation term of a student's training loss, from a frozen teacher of the same task and vocabulary."""

    def __init__(self, teacher: Teacher, student: ModelFamily, settings: DistillSettings) -> None:
        self.teacher, self.teacher_task, self.settings = teacher.model, teacher.task, settings
        self.teacher.eval().requires_grad_(False)
        teacher_task = teacher.task
        self.form = DISTILLED_TASKS[teacher_task.name][1]
        features = settings.feature_weight > 0
        if features and getattr(teacher_task, "head", None) == "text":
            raise ConfigError(
                "distill.feature_weight: classification's task.head=text reads no pooled features; set "
                "distill.feature_weight=0 or task.head=linear"
            )
        name = teacher_task.name
        self.student_features = HeadInput(student.heads[name]) if features else None
        self.teacher_features = HeadInput(self.teacher.heads[name]) if features else None

    def to(self, device: torch.device, dtype: torch.dtype) -> Distiller:
        """The teacher on the student's device, in the student's parameter type (`trainer.precision=bf16-true`)."""
        self.teacher.to(device=device, dtype=dtype)
        return self

    def loss(self, task_loss: torch.Tensor, outputs: TensorRecord, batch: Batch) -> torch.Tensor:
        """The student's training loss: its task loss mixed with the teacher's soft targets (`outputs`: the student's
        training outputs on `batch`)."""
        settings = self.settings
        with torch.no_grad():
            taught = self.teacher_task.forward(self.teacher, batch)
        soft = logit_distillation(outputs.logits, taught.logits, settings.temperature, self.form)
        loss = (1 - settings.alpha) * task_loss + settings.alpha * soft
        if self.student_features is not None:
            features = similarity_loss(self.student_features.take(), self.teacher_features.take())
            loss = loss + settings.feature_weight * features
        return loss
