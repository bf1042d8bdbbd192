"""Training progress bars whose total is what the epoch will really run.

Lightning's bars total the epoch's batches (`limit_train_batches`, the loader's length) even when
`trainer.max_steps` ends the run sooner: `trainer.max_steps=3` on a 100-batch epoch showed 3/100 at the end. These
bars total the batches left before `max_steps` (optimizer steps × `accumulate_grad_batches`), each epoch.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar


class _FollowsMaxSteps:
    trainer: pl.Trainer

    def batches_this_epoch(self, done: int = 0) -> int | float:
        """The epoch's batches, cut at `trainer.max_steps`; `done`: the epoch's batches run so far."""
        trainer = self.trainer
        total = trainer.num_training_batches
        if trainer.max_steps is None or trainer.max_steps < 0:
            return total
        left = max(trainer.max_steps - trainer.global_step, 0) * trainer.accumulate_grad_batches
        return min(total, done + left)

    @property
    def total_train_batches(self) -> int | float:
        return self.batches_this_epoch()


class StepBudgetTQDMProgressBar(_FollowsMaxSteps, TQDMProgressBar):
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        if bar is not None:  # a resumed epoch starts at its batch_idx: the total is known exactly from here
            total = self.batches_this_epoch(batch_idx + 1)
            if total != float("inf") and bar.total != total:
                bar.total = total
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class StepBudgetRichProgressBar(_FollowsMaxSteps, RichProgressBar):
    _shown_total: int | float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._shown_total = self.total_train_batches

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            total = self.batches_this_epoch(batch_idx + 1)
            if total != float("inf") and total != self._shown_total:
                self.progress.update(self.train_progress_bar_id, total=total)
                self._shown_total = total
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def progress_bar(*, terminal: bool) -> pl.Callback:
    """Rich on a terminal; otherwise a plain bar that refreshes rarely (cheap, readable in CI logs)."""
    return StepBudgetRichProgressBar() if terminal else StepBudgetTQDMProgressBar(refresh_rate=50)
