"""One validation when `fit` ends by its budget and the last validation does not cover the last steps.

Lightning validates at epoch ends (or `val_check_interval`) only: a run stopped by `trainer.max_steps` mid-epoch,
by `max_time`, or by `max_epochs` in an epoch that `check_val_every_n_epoch` skips ends with weights nobody
scored, and a run shorter than one epoch has no best checkpoint at all. `StepCheckpoint.on_train_end` calls
`validate_unless_current` before it writes the final checkpoints. `on_train_end` runs only when fit ends normally:
a preemption signal (`PreemptionStop`) and the non-finite-loss guard (`NonFiniteLoss`) leave fit by an exception,
so they save and exit at once, without it.
"""

from __future__ import annotations

import pytorch_lightning as pl


def last_validated_step(pl_module: pl.LightningModule) -> int | None:
    """The global step of the module's latest validation (kept in its checkpoints, so a resumed run knows it)."""
    history = getattr(pl_module, "val_history", None) or []
    return int(history[-1]["step"]) if history else None


def validate_unless_current(trainer: pl.Trainer) -> bool:
    """Run the fit's validation loop on the final weights unless the latest validation was at this very step (the
    epoch end already validated, or a resumed run had nothing left to train). Returns whether it ran. Every
    process decides alike (same step, same history) and runs it together."""
    if not trainer.enable_validation or trainer.global_step == 0:
        return False
    if last_validated_step(trainer.lightning_module) == trainer.global_step:
        return False
    epoch_loop, epochs = trainer.fit_loop.epoch_loop, trainer.fit_loop.epoch_progress.current
    connector = trainer._logger_connector
    first_loop_iter = connector._first_loop_iter
    # As the epoch loop runs validation (`_TrainingEpochLoop.on_advance_end`). The loop's counters have moved past
    # the last trained batch by now (its epoch is counted as completed, its step as logged): for the validation
    # they are set back, so its metrics, history entry and sample picture carry that batch's epoch and step, as
    # an epoch end's validation does; then restored, before any checkpoint records them.
    trainer.validating = True
    epoch_loop._batches_that_stepped -= 1
    epochs.completed -= 1
    try:
        epoch_loop.val_loop.run()
    finally:
        epoch_loop._batches_that_stepped += 1
        epochs.completed += 1
        trainer.training = True
        connector._first_loop_iter = first_loop_iter
    return True
