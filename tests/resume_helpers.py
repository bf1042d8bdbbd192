"""Callbacks the resume tests inject with `+callbacks.<name>._target_=tests.resume_helpers.<Class>`."""

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
            f.write(" ".join(map(str, batch["index"].tolist())) + "\n")
