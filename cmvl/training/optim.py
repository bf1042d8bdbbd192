"""Optimiser parameter groups and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from cmvl.training.lightning_compat import set_reported_lr


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and embeddings (the usual transformer recipe); frozen params left out."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "embeddings" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class WarmupCosine:
    """LambdaLR multiplier: linear warmup from 0 to 1, then cosine decay to `min_lr_ratio`.

    The total step count is set after construction (`set_total_steps`): it is known only once the train loader is
    set up, and asking Lightning for it inside `configure_optimizers` (`trainer.estimated_stepping_batches`) sets
    up the loader *before* a checkpoint's loop state is restored, which silently drops the saved loader position
    (a mid-epoch resume would restart the epoch's sample order).
    """

    def __init__(self, *, warmup_steps: int | None, warmup_ratio: float, min_lr_ratio: float) -> None:
        self.warmup_steps_cfg, self.warmup_ratio, self.min_lr_ratio = warmup_steps, warmup_ratio, min_lr_ratio
        self.total_steps: int | None = None

    @property
    def warmup_steps(self) -> int:
        assert self.total_steps is not None
        return self.warmup_steps_cfg if self.warmup_steps_cfg is not None else int(self.warmup_ratio * self.total_steps)

    def __call__(self, step: int) -> float:
        if self.total_steps is None:
            return 0.0  # not started yet; set_total_steps puts in the real value before the first step
        warmup = self.warmup_steps
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int | None, warmup_ratio: float, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = WarmupCosine(warmup_steps=warmup_steps, warmup_ratio=warmup_ratio, min_lr_ratio=min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def set_total_steps(scheduler: torch.optim.lr_scheduler.LambdaLR, total_steps: int) -> None:
    """Fix the schedule length and put the learning rate of the scheduler's current step into the optimizer (a
    fresh run: step 0; a resumed run: the restored step, so the rate equals the uninterrupted run's)."""
    for schedule in scheduler.lr_lambdas:
        schedule.total_steps = total_steps
    step = scheduler.last_epoch
    lrs = [base * schedule(step) for base, schedule in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    set_reported_lr(scheduler, lrs)  # what get_last_lr() (LearningRateMonitor) reports
