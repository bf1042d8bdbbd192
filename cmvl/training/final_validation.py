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

from cmvl.training.lightning_compat import run_fit_validation


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
    # As the epoch loop runs validation, its metrics, history entry and sample picture carrying the last trained
    # batch's epoch and step, as an epoch end's validation does.
    run_fit_validation(trainer)
    return True
