"""The teacher of `distill.teacher=CKPT`: a trained run restored by `cmvl.run.load_run` (the safe loader: weights
only, no code from the file), checked to share the student's task, vocabulary, tokenizer and image settings, so its
logits and the student's index the same answers for the same inputs. The distillation loss itself is
`cmvl.training.distillation`'s."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerFast

from cmvl.data.text import tokenizer_to_state
from cmvl.errors import ConfigError, UserError, one_line
from cmvl.run import load_run
from cmvl.tasks.base import Task
from cmvl.training.distillation import DISTILLED_TASKS, Teacher, distillation_problem

IMAGE_KEYS = ("size", "mean", "std")  # how the batches' images are made, which the teacher reads as the student


def load_teacher(cfg: DictConfig, task: Task, tokenizer: PreTrainedTokenizerFast) -> Teacher:
    """The teacher `cfg.distill.teacher` names, for a student of `task` (with its fitted vocabulary) and
    `tokenizer`; a `UserError` (one line) for a missing or invalid file or a teacher of another task, vocabulary,
    tokenizer or image size."""
    path = str(cfg.distill.teacher)
    problem = distillation_problem(task)
    if problem:
        raise ConfigError(problem)
    try:
        run = load_run(path, device="cpu")
    except UserError as err:
        raise type(err)(f"distill.teacher: {one_line(err)}") from None
    where = f"distill.teacher={path}"
    if run.task.name != task.name:
        raise ConfigError(
            f"{where}: the teacher was trained for task={run.task.name}, this run trains task={task.name}"
        )
    key = DISTILLED_TASKS[task.name][0]
    theirs, ours = run.task.state_dict()[key], task.state_dict()[key]
    if theirs != ours:
        raise ConfigError(
            f"{where}: the teacher's {key} differ from this run's ({_difference(theirs, ours)}); "
            "train the teacher on the same dataset and task settings"
        )
    if "text" in task.parts and tokenizer_to_state(run.tokenizer) != tokenizer_to_state(tokenizer):
        raise ConfigError(
            f"{where}: the teacher's tokenizer differs from this run's; the teacher reads the "
            "student's token ids, so train both with the same text.tokenizer settings and dataset"
        )
    for name in IMAGE_KEYS:
        theirs_image, ours_image = _plain(run.config.data.image[name]), _plain(cfg.data.image[name])
        if theirs_image != ours_image:
            raise ConfigError(
                f"{where}: the teacher was trained with data.image.{name}={theirs_image}, this run "
                f"uses {ours_image}; the teacher reads the student's images"
            )
    return Teacher(model=run.model, task=run.task)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _difference(theirs: list[str], ours: list[str]) -> str:
    if len(theirs) != len(ours):
        return f"{len(theirs)} against {len(ours)}"
    index = next(i for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b)
    return f"{len(ours)} each, the first difference at #{index}: {theirs[index]!r} against {ours[index]!r}"
