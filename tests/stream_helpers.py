"""Callbacks the streamed-data tests inject with `+callbacks.<name>._target_=tests.stream_helpers.<Class>`."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl


class RecordCaptions(pl.Callback):
    """Appends the captions of every training batch to `path`, one line per step (a streamed batch's `index` is
    its position in the batch, so the captions say which samples it holds)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        with self.path.open("a") as f:
            f.write(" | ".join(batch.texts) + "\n")
