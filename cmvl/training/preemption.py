"""Preemption (SIGTERM, SIGUSR1 as SLURM sends before a time limit, or Ctrl-C): save at the next step boundary and
stop; a second Ctrl-C aborts at once without saving.

The signal handler only records the signal; the checkpoint is written from `on_train_batch_end`, between two
optimizer steps, never inside the handler. Then the run stops at once (`PreemptionStop`), so no epoch-end hook
runs and writes a checkpoint whose loop state claims a finished epoch. A signal seen at an epoch's last batch is
honoured after that epoch's validation and checkpoints instead (from `on_train_epoch_end`), because Lightning
resumes a checkpoint taken between the last batch and the validation in the next epoch, skipping both.
Under DDP the ranks agree on the stop step: the flag is all-reduced every step (any rank that saw the signal
stops them all).

A signal seen anywhere else (the sanity check, a validation, an epoch-end checkpoint) is honoured at the next of
those two points, and one seen in `on_train_end` names the newest checkpoint, which is complete by then.

cmvl's handler replaces Lightning's SIGTERM handler for the duration of `fit` and puts the previous handlers back
afterwards. Lightning installs its own after `on_fit_start` and, outside a training step, ends `fit` with a quiet
`SystemExit` (exit 0, nothing saved), so cmvl takes the signals back once the loops start (`_take_over_signals`).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint

from cmvl.training.lightning_compat import is_last_batch, log_epoch_metrics, log_step_metrics

EXIT_PREEMPTED = 3  # process exit code of a run that saved and stopped on a preemption signal
# Ctrl-C (SIGINT) too: a first one saves and stops like SIGTERM; a second one aborts at once (see `_on_signal`).
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name))


STEP_CHECKPOINT = "step{step:08d}"  # file name (without .ckpt) of step checkpoints; ModelCheckpoint's format too


class PreemptionStop(Exception):
    """Raised out of `trainer.fit` after the preemption checkpoint is on disk."""

    def __init__(self, step: int, path: Path) -> None:
        super().__init__(f"preempted at step {step}; saved {path}")
        self.step, self.path = step, path


class PreemptionCallback(Checkpoint):
    """A `Checkpoint` callback, so that Lightning runs its `on_train_epoch_end` after the LightningModule's (which
    logs the epoch's mean training loss) rather than before."""

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self._signalled = False
        self._stop_at_epoch_end = False
        self._previous: dict[int, object] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self._signalled:
            raise KeyboardInterrupt  # a second Ctrl-C: the user will not wait for the step to end and the save
        self._signalled = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _take_over_signals(self) -> None:
        """Ours again in place of the handler Lightning's signal connector installed after `on_fit_start` (which
        wraps ours and puts it back at teardown); the handlers from before `fit` stay the ones restored."""
        if threading.current_thread() is threading.main_thread():  # as Lightning: only there can handlers be set
            for signum in SIGNALS:
                signal.signal(signum, self._on_signal)

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over_signals()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_over_signals()

    def _stop_requested(self, trainer: pl.Trainer) -> bool:
        """Whether any rank saw a signal (a collective under DDP: every rank calls it at the same hook)."""
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(self._signalled, all=False))
        return self._signalled

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        if not self._stop_requested(trainer) or self._stop_at_epoch_end:
            return
        if is_last_batch(trainer) or batch_idx + 1 >= trainer.num_training_batches:
            # The epoch's validation and checkpoints come next; a checkpoint taken before them would resume into
            # the next epoch without them (Lightning does not rerun them), so the run stops right after them.
            self._stop_at_epoch_end = True
            return
        self._save_and_stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Also a signal seen after the epoch's last step: in its validation or the checkpoints saved after it.
        if self._stop_requested(trainer) or self._stop_at_epoch_end:
            self._stop_at_epoch_end = True
            self._save_and_stop(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A signal seen after the last epoch (in the final validation or the last checkpoints, which the checkpoint
        callbacks have written by now: they run before this one): the run stops short of its summary and names
        the newest checkpoint; `resume=auto` then finishes it."""
        if not self._stop_requested(trainer):
            return
        saved = [path for path in self.dirpath.glob("*.ckpt") if path.is_file()]
        if not saved:
            path = self.dirpath / f"{STEP_CHECKPOINT.format(step=trainer.global_step)}.ckpt"
            trainer.save_checkpoint(path)
            saved = [path]
        raise PreemptionStop(trainer.global_step, max(saved, key=lambda path: path.stat().st_mtime_ns))

    def _save_and_stop(self, trainer: pl.Trainer) -> None:
        path = self.dirpath / f"{STEP_CHECKPOINT.format(step=trainer.global_step)}.ckpt"
        trainer.save_checkpoint(path)
        # Mid-epoch, the loop logs this step's metrics after the batch-end hooks, which the stop skips: log them
        # here and flush the loggers, so the run's metrics up to the checkpoint are all on disk.
        if not self._stop_at_epoch_end:
            log_step_metrics(trainer)
        else:  # the epoch's metrics (at the epoch's last step), which the loop logs after these hooks
            log_epoch_metrics(trainer)
        for logger in trainer.loggers:
            logger.save()
        raise PreemptionStop(trainer.global_step, path)
