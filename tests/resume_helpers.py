"""Callbacks the reliability tests inject with `+callbacks.<name>._target_=tests.resume_helpers.<Class>`."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl


class SignalAtStep(pl.Callback):
    """Sends this process `signal_name` right after optimizer step `step`, as a cluster scheduler would."""

    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step, self.signum = step, getattr(signal, signal_name)

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class RecordSampleIds(pl.Callback):
    """Appends the dataset indices of every training batch to `path`, one line per step."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        with self.path.open("a") as f:
            f.write(" ".join(map(str, batch.index.tolist())) + "\n")


class NaNLossAtSteps(pl.Callback):
    """Makes the training loss NaN on process `rank` at the given global steps (a numerical blow-up on one GPU)."""

    def __init__(self, steps: list[int], rank: int = 0) -> None:
        self.steps, self.rank = set(steps), rank

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_rank != self.rank or trainer.global_step not in self.steps:
            return
        task = pl_module.task
        loss = type(task).loss

        def nan_loss(*args, **kwargs):
            del task.loss  # once: back to the class's method
            return loss(task, *args, **kwargs) * float("nan")

        task.loss = nan_loss
