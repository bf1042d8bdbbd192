"""Adversarial training in the embedding space (`adversarial.*`), after VILLA (Gan et al., 2020) and FreeLB (Zhu et
al., 2020): the text tokens and the vision tokens that enter fusion (each after its projection to `model.dim`) are
perturbed by K ascent steps on the task's loss, each an L2-normalised gradient step per sample, optionally held to
an L2 ball; the training loss is the clean loss plus the mean over the K perturbed forwards of (their task loss +
`kl_weight` × the symmetric KL between the clean and the perturbed predictions). Every perturbed forward also
trains the weights, as in FreeLB. For the tasks whose loss is on logits (VQA, tagging, classification, captioning);
`steps: 0` trains exactly as without it (the same code path: nothing here runs).

The hook is `VisionLanguageModel.perturbation`: a callable the model passes its projected tokens through
(`TokenPerturbation.on(model)` sets it for one forward), the vision tokens once per row (question, caption), so
each row's perturbation is its own however its image's rows are split between batches or DDP processes. `cmvl
eval attack=embedding` uses the same perturbation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from cmvl.errors import ConfigError
from cmvl.models.families.base import ModelFamily
from cmvl.models.tokens import Tokens
from cmvl.tasks.base import Task

IGNORE_LABEL = -100  # the label of a padded position in teacher-forced outputs (cmvl.tasks.text_generation.IGNORE)
ADVERSARIAL_TASKS = ("vqa", "tagging", "classification", "caption")  # tasks whose outputs are prediction logits


@dataclass
class TokenPerturbation:
    """One additive perturbation per token tensor the model passes through its hook in a forward: the n-th call at a
    site (`text`, `vision`) gets `deltas[(site, n)]`, created as zeros (float32) on first use."""

    deltas: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def __call__(self, site: str, tokens: Tokens) -> Tokens:
        n = self.calls.get(site, 0)
        self.calls[site] = n + 1
        delta = self.deltas.get((site, n))
        if delta is None:
            delta = torch.zeros(tokens.feats.shape, device=tokens.feats.device, requires_grad=True)
            self.deltas[(site, n)] = delta
        return tokens.with_feats(tokens.feats + delta.to(tokens.feats.dtype))

    @contextlib.contextmanager
    def on(self, model: ModelFamily) -> Iterator[None]:
        """The model's projected tokens pass through this perturbation for the forwards inside the block."""
        if not hasattr(model, "perturbation"):
            raise ConfigError(f"model={model.name} has no embedding hook for adversarial perturbations")
        self.calls = {}
        model.perturbation = self
        try:
            yield
        finally:
            model.perturbation = None

    def ascend(self, loss: torch.Tensor, step_size: float, norm_bound: float | None) -> None:
        """One step up `loss`'s gradient: each sample's delta moves by `step_size` along its L2-normalised gradient,
        then is projected back into the L2 ball of radius `norm_bound` (None: unbounded). The graph of `loss` is
        kept (the weights' gradient still flows through it)."""
        keys = list(self.deltas)
        grads = torch.autograd.grad(loss, [self.deltas[k] for k in keys], retain_graph=True, allow_unused=True)
        for key, grad in zip(keys, grads):
            delta = self.deltas[key].detach()
            if grad is not None:
                delta = delta + step_size * per_sample_unit(grad.detach().float().nan_to_num(0.0, 0.0, 0.0))
            if norm_bound is not None:
                delta = project_to_ball(delta, norm_bound)
            self.deltas[key] = delta.requires_grad_()


def per_sample_unit(x: torch.Tensor) -> torch.Tensor:
    """`x` divided by each sample's (first axis) L2 norm; a zero sample stays zero."""
    norms = x.flatten(1).norm(dim=1).clamp_min(1e-12)
    return x / norms.view(-1, *([1] * (x.dim() - 1)))


def project_to_ball(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Each sample of `x` scaled down into the L2 ball of `radius` (samples inside it are unchanged)."""
    norms = x.flatten(1).norm(dim=1)
    scale = (radius / norms.clamp_min(1e-12)).clamp(max=1.0)
    return x * scale.view(-1, *([1] * (x.dim() - 1)))


def prediction_logits(outputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits a task's training outputs predict with (…×C) and, for teacher-forced text, the positions that are
    not padding (None: all)."""
    logits = getattr(outputs, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise ConfigError(f"adversarial training needs outputs with logits; {type(outputs).__name__} has none")
    labels = getattr(outputs, "labels", None)
    valid = labels != IGNORE_LABEL if isinstance(labels, torch.Tensor) and labels.shape == logits.shape[:-1] else None
    return logits, valid


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p‖q) + KL(q‖p) of the softmax distributions over the last axis, averaged over the rows (the `valid`
    ones)."""
    p_log, q_log = F.log_softmax(p_logits.float(), dim=-1), F.log_softmax(q_logits.float(), dim=-1)
    per_row = ((p_log.exp() - q_log.exp()) * (p_log - q_log)).sum(-1)  # = KL(p‖q) + KL(q‖p)
    if valid is not None:
        return per_row[valid].sum() / valid.sum().clamp_min(1)
    return per_row.mean()


@dataclass(frozen=True)
class Adversary:
    """The `adversarial` config: K = `steps` ascent steps of `step_size` (L2, per sample), `norm_bound` (null: none),
    `kl_weight`, and the first optimizer step it runs at (`start_step`; plain training before)."""

    steps: int
    step_size: float
    norm_bound: float | None
    kl_weight: float
    start_step: int = 0

    def active(self, global_step: int) -> bool:
        return global_step >= self.start_step

    def outputs_and_loss(self, model: ModelFamily, task: Task, batch: Any) -> tuple[Any, torch.Tensor]:
        """The clean outputs and the adversarial training loss of `batch`."""
        perturbation = TokenPerturbation()
        with perturbation.on(model):  # zero deltas: the clean forward, whose gradient starts the first ascent
            clean = task.forward(model, batch)
        clean_loss = task.loss(clean, batch)
        clean_logits, valid = prediction_logits(clean)
        ascent_loss, adversarial = clean_loss, clean_loss.new_zeros(())
        for _ in range(self.steps):
            perturbation.ascend(ascent_loss, self.step_size, self.norm_bound)
            with perturbation.on(model):
                perturbed = task.forward(model, batch)
            ascent_loss = task.loss(perturbed, batch)
            if self.kl_weight:
                ascent_loss = ascent_loss + self.kl_weight * symmetric_kl(
                    clean_logits, prediction_logits(perturbed)[0], valid
                )
            adversarial = adversarial + ascent_loss / self.steps
        return clean, clean_loss + adversarial


def build_adversary(settings: dict[str, Any] | None, task: Task) -> Adversary | None:
    """The run's `Adversary`, or None when `adversarial.steps` is 0 (or the section is absent: older configs)."""
    if not settings or not settings.get("steps"):
        return None
    unsupported = [m.name for m in task.members() if m.name not in ADVERSARIAL_TASKS]
    if unsupported:
        raise ConfigError(
            f"adversarial.steps={settings['steps']}: task={unsupported[0]} has no loss on prediction logits; "
            f"adversarial training runs for {', '.join(ADVERSARIAL_TASKS)}"
        )
    bound = settings.get("norm_bound")
    return Adversary(
        steps=int(settings["steps"]),
        step_size=float(settings["step_size"]),
        norm_bound=float(bound) if bound else None,
        kl_weight=float(settings.get("kl_weight", 0.0)),
        start_step=int(settings.get("start_step", 0)),
    )
