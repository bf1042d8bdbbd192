"""Robust accuracy under attack: `cmvl eval ... attack=pgd|fgsm|embedding attack.eps=2/255`.

Each evaluation batch is attacked before it is scored, by maximising the task's training loss on the batch's ground
truth (so only annotated splits, and the tasks adversarial training runs for):

  fgsm       one step of eps · sign(∇) on the pixels (Goodfellow et al., 2015), L∞ ball of radius eps
  pgd        `attack.steps` steps of `attack.step_size` · sign(∇) from a random start in the L∞ ball, projected
             back into it and into [0, 1] (Madry et al., 2018)
  embedding  `attack.steps` L2-normalised steps on the text and vision tokens entering fusion, held to the L2 ball
             of radius eps per sample: the perturbation adversarial training uses (cmvl/training/adversarial.py)

Pixels are in [0, 1] (eps=2/255: two grey levels); the model takes them as float images, before its normalisation.
The model is in eval mode; the attack's random start is seeded (`attack.seed`), so a result is repeatable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from cmvl.errors import ConfigError
from cmvl.training.adversarial import TokenPerturbation

ATTACKS = ("fgsm", "pgd", "embedding")
# Attacks need the training loss on an evaluation batch: tasks that score their training outputs (captioning's
# evaluation rows carry no caption to teacher-force)
ATTACKED_TASKS = ("vqa", "tagging", "classification")
KEYS = ("eps", "steps", "step_size", "seed")


@dataclass(frozen=True)
class Attack:
    name: str
    eps: float
    steps: int
    step_size: float
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "eps": self.eps, "steps": self.steps, "step_size": self.step_size, "seed": self.seed}

    def eval_outputs(self, model: Any, task: Any, batch: Any) -> Any:
        """The task's evaluation outputs on the attacked batch."""
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.name == "embedding":
                perturbation = self._embedding_perturbation(model, task, batch)
                with perturbation.on(model), torch.no_grad():
                    return task.eval_forward(model, batch)
            attacked = replace(batch, images=self._attacked_images(model, task, batch))
        with torch.no_grad():
            return task.eval_forward(model, attacked)

    def _attacked_images(self, model: Any, task: Any, batch: Any) -> torch.Tensor:
        clean = batch.images.float() / 255.0 if batch.images.dtype == torch.uint8 else batch.images.float()
        if self.name == "fgsm":
            start, step, steps = clean, self.eps, 1
        else:
            start = (clean + torch.empty_like(clean).uniform_(-self.eps, self.eps)).clamp(0.0, 1.0)
            step, steps = self.step_size, self.steps
        images = start.detach()
        for _ in range(steps):
            images.requires_grad_(True)
            loss = task.loss(task.forward(model, replace(batch, images=images)), batch)
            (grad,) = torch.autograd.grad(loss, [images])
            images = images.detach() + step * grad.sign()
            images = torch.min(torch.max(images, clean - self.eps), clean + self.eps).clamp(0.0, 1.0)
        return images.detach()

    def _embedding_perturbation(self, model: Any, task: Any, batch: Any) -> TokenPerturbation:
        perturbation = TokenPerturbation()
        with perturbation.on(model):
            loss = task.loss(task.forward(model, batch), batch)
        for _ in range(self.steps):
            perturbation.ascend(loss, self.step_size, self.eps)
            with perturbation.on(model):
                loss = task.loss(task.forward(model, batch), batch)
        return perturbation


def split_attack_overrides(overrides: Sequence[str]) -> tuple[Attack | None, list[str]]:
    """The attack that `attack=NAME` and `attack.KEY=VALUE` overrides ask for (None: no attack), and the other
    overrides. A bad name, key or value is one line."""
    settings: dict[str, str] = {}
    rest = []
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+")
        if key == "attack" or key.startswith("attack."):
            settings[key] = value
        else:
            rest.append(override)
    if not settings:
        return None, rest
    name = settings.pop("attack", None)
    if name is None:
        raise ConfigError(f"{next(iter(settings))}: choose the attack too (attack={'|'.join(ATTACKS)})")
    if name not in ATTACKS:
        raise ConfigError(f"attack={name}: choose one of {', '.join(ATTACKS)}")
    unknown = [k for k in settings if k.removeprefix("attack.") not in KEYS]
    if unknown:
        raise ConfigError(f"{unknown[0]}: no such attack setting (attack.{', attack.'.join(KEYS)})")
    eps = _number(settings.get("attack.eps", "2/255" if name != "embedding" else "1.0"), "attack.eps")
    steps = 1 if name == "fgsm" else _count(settings.get("attack.steps", "10"), "attack.steps")
    if name == "fgsm" and "attack.steps" in settings and settings["attack.steps"] != "1":
        raise ConfigError("attack.steps: fgsm takes one step; use attack=pgd for more")
    default_step = 2.5 * eps / steps  # Madry et al.'s step: the ball's edge is reachable from anywhere in it
    step_size = (
        _number(settings["attack.step_size"], "attack.step_size") if "attack.step_size" in settings else default_step
    )
    seed = _count(settings.get("attack.seed", "0"), "attack.seed", minimum=0)
    return Attack(name=name, eps=eps, steps=steps, step_size=step_size, seed=seed), rest


def _number(text: str, key: str) -> float:
    """A positive number, or a fraction `a/b` (eps=2/255)."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(?:/\s*([0-9.eE+-]+)\s*)?", text)
    try:
        value = float(match.group(1)) / (float(match.group(2)) if match.group(2) else 1.0) if match else None
    except (ValueError, ZeroDivisionError):
        value = None
    if value is None or not value > 0 or value == float("inf"):
        raise ConfigError(f"{key}={text}: must be a positive number or a fraction (e.g. 2/255)")
    return value


def _count(text: str, key: str, minimum: int = 1) -> int:
    if not re.fullmatch(r"\s*\d+\s*", text) or int(text) < minimum:
        raise ConfigError(f"{key}={text}: must be an integer >= {minimum}")
    return int(text)


def check_attackable(task: Any, split_annotated: bool, attack: Attack) -> None:
    """Attacks maximise the loss on the ground truth: an annotated split and a task with logits."""
    members = [m.name for m in task.members()]
    bad = next((m for m in members if m not in ATTACKED_TASKS), None)
    if bad is not None:
        raise ConfigError(
            f"attack={attack.name}: task={bad} is not attacked (attacks run for {', '.join(ATTACKED_TASKS)})"
        )
    if not split_annotated:
        raise ConfigError(f"attack={attack.name}: the split has no annotations, and an attack needs the true answers")
