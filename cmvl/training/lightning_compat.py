"""Every use cmvl makes of Lightning's private API, and of one PyTorch private attribute, in one place.

Lightning offers no public way to do a few things cmvl needs (log a preempted step's metrics, run the fit's own
validation loop once more at the end, guard its checkpoint restore, save through `ModelCheckpoint`'s own steps,
keep a resumed run's `metrics.csv`). Each function below names the private attribute it reads or writes and the
versions it was checked on. `tests/training/test_lightning_compat.py` checks, on the installed Lightning, that
every one of them still finds its attribute (and that Lightning still calls the hooks cmvl overrides), so an upgrade
fails there, by name, not somewhere inside a training run.

Checked on: pytorch-lightning 2.6.6 (the test suite runs on it); the source of 2.4.0, 2.5.0-2.5.6 and 2.6.0-2.6.5
was read for each attribute (same names, same use in Lightning's own loops). `SUPPORTED` is that range, and
pyproject.toml allows the same; `tests/training/test_lightning_compat.py` keeps the two equal.

Outside the range cmvl warns once at import and goes on, rather than refusing to start: pip already keeps the
range for anyone who installs cmvl normally, so an outside version was put there on purpose (a cluster's module,
`--no-deps`), and a patch or minor release usually keeps these attributes. If one is really gone, the function
that needs it raises `LightningAPIError` (one line: the attribute, the versions checked, the install to use)
instead of an AttributeError from deep inside Lightning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from cmvl.errors import UserError

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

SUPPORTED = SpecifierSet(">=2.4,<2.7")  # pytorch-lightning versions checked (see above); pyproject.toml's range
CHECKED_ON = "2.6.6"  # the version the test suite ran on
TORCH_CHECKED_ON = "2.14.1"  # for `set_reported_lr`, the one PyTorch private attribute


class UntestedLightningWarning(UserWarning):
    """The installed pytorch-lightning is outside the versions cmvl's use of its private API was checked on."""


class LightningAPIError(UserError):
    """The installed pytorch-lightning lacks a private attribute cmvl relies on (a version outside `SUPPORTED`)."""


def check_installed_version(installed: str | None = None) -> bool:
    """Warn (once per process: Python's default warning filter) when pytorch-lightning is outside `SUPPORTED`.
    Returns whether it is inside."""
    installed = installed or version("pytorch-lightning")
    if Version(installed) in SUPPORTED:
        return True
    warnings.warn(
        f"cmvl: pytorch-lightning {installed} is outside the versions cmvl was checked on ({SUPPORTED}); it uses "
        f"a few of Lightning's private attributes (cmvl/training/lightning_compat.py), which may have changed: "
        f'pip install "pytorch-lightning{SUPPORTED}" if training fails',
        UntestedLightningWarning,
        stacklevel=2,
    )
    return False


def _missing(what: str) -> LightningAPIError:
    return LightningAPIError(
        f"cmvl needs {what} from pytorch-lightning, which {version('pytorch-lightning')} does not have (checked on "
        f'{SUPPORTED}): pip install "pytorch-lightning{SUPPORTED}"'
    )


def _get(obj: Any, name: str, what: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise _missing(what) from None


# --- The logger connector (`trainer._logger_connector`, `_LoggerConnector`) ---


def _logger_connector(trainer: pl.Trainer) -> Any:
    return _get(trainer, "_logger_connector", "Trainer._logger_connector")


def logs_this_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes the metrics of the current training step (`log_every_n_steps`).
    Reads `trainer._logger_connector.should_update_logs`."""
    return bool(_get(_logger_connector(trainer), "should_update_logs", "_LoggerConnector.should_update_logs"))


def log_step_metrics(trainer: pl.Trainer) -> None:
    """Hand the current step's logged metrics to the loggers now (what the loop does after the batch-end hooks).
    Calls `trainer._logger_connector.update_train_step_metrics()`."""
    _get(_logger_connector(trainer), "update_train_step_metrics", "_LoggerConnector.update_train_step_metrics")()


def log_epoch_metrics(trainer: pl.Trainer) -> None:
    """Hand the epoch's logged metrics to the loggers now, at the epoch's last step, as `_FitLoop.on_advance_end`
    does after the epoch-end hooks. Calls `trainer._logger_connector.on_epoch_end()` and
    `.update_train_epoch_metrics()`, with `fit_loop.epoch_loop._batches_that_stepped` set back by one meanwhile."""
    connector = _logger_connector(trainer)
    _get(connector, "on_epoch_end", "_LoggerConnector.on_epoch_end")()
    with _at_last_stepped_batch(trainer):
        _get(connector, "update_train_epoch_metrics", "_LoggerConnector.update_train_epoch_metrics")()


# --- The fit loop (`trainer.fit_loop`: `_FitLoop`, its `_TrainingEpochLoop`) ---


def _epoch_loop(trainer: pl.Trainer) -> Any:
    return _get(trainer.fit_loop, "epoch_loop", "_FitLoop.epoch_loop")


@contextmanager
def _at_last_stepped_batch(trainer: pl.Trainer) -> Iterator[None]:
    """`fit_loop.epoch_loop._batches_that_stepped` (the step number loggers see) one back, then restored: the loop
    has counted the last batch as stepped by the time the epoch's metrics and validation are logged."""
    loop = _epoch_loop(trainer)
    _get(loop, "_batches_that_stepped", "_TrainingEpochLoop._batches_that_stepped")
    loop._batches_that_stepped -= 1
    try:
        yield
    finally:
        loop._batches_that_stepped += 1


def is_last_batch(trainer: pl.Trainer) -> bool:
    """Whether the training batch in progress is the epoch's last (known for iterable loaders too).
    Reads `trainer.fit_loop.epoch_loop.batch_progress.is_last_batch`."""
    progress = _get(_epoch_loop(trainer), "batch_progress", "_TrainingEpochLoop.batch_progress")
    return bool(_get(progress, "is_last_batch", "_BatchProgress.is_last_batch"))


def run_fit_validation(trainer: pl.Trainer) -> None:
    """Run the fit's validation loop (`fit_loop.epoch_loop.val_loop.run()`) after training ended, as the epoch
    loop runs it (`_TrainingEpochLoop.on_advance_end`): `trainer.validating` on, the logger connector's
    `_first_loop_iter` kept and restored, `trainer.training` back on after. The loop's counters have moved past
    the last trained batch by now (its epoch counted as completed, its step as logged): for the validation they
    are set back (`epoch_loop._batches_that_stepped`, `fit_loop.epoch_progress.current.completed`), so its
    metrics carry that batch's epoch and step, as an epoch end's validation does; then restored, before any
    checkpoint records them."""
    loop = _epoch_loop(trainer)
    val_loop = _get(loop, "val_loop", "_TrainingEpochLoop.val_loop")
    epochs = _get(_get(trainer.fit_loop, "epoch_progress", "_FitLoop.epoch_progress"), "current", "_Progress.current")
    connector = _logger_connector(trainer)
    first_loop_iter = _get(connector, "_first_loop_iter", "_LoggerConnector._first_loop_iter")
    trainer.validating = True
    epochs.completed -= 1
    try:
        with _at_last_stepped_batch(trainer):
            val_loop.run()
    finally:
        epochs.completed += 1
        trainer.training = True
        connector._first_loop_iter = first_loop_iter


# --- The checkpoint connector (`trainer._checkpoint_connector`, `_CheckpointConnector`) ---

# The steps of Lightning's checkpoint connector that restore a resumed run from the file: the weights, the
# LightningModule's / datamodule's / callbacks' on_load_checkpoint and states, the loops, optimizers and schedulers.
RESTORE_STEPS = ("_restore_modules_and_callbacks", "restore_training_state")


def wrap_restore_steps(trainer: pl.Trainer, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace, on this trainer only, the checkpoint connector's restore steps (`RESTORE_STEPS`) by `wrap(step)`.
    Writes `trainer._checkpoint_connector._restore_modules_and_callbacks` and `.restore_training_state`
    (Lightning offers no public hook around its restore)."""
    connector = _get(trainer, "_checkpoint_connector", "Trainer._checkpoint_connector")
    for name in RESTORE_STEPS:
        setattr(connector, name, wrap(_get(connector, name, f"_CheckpointConnector.{name}")))


# --- ModelCheckpoint's own saving steps (for a subclass that saves at the end of fit) ---


def monitor_candidates(callback: ModelCheckpoint, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
    """The metrics a checkpoint callback may monitor now (callback metrics plus `epoch` and `step`).
    Calls `ModelCheckpoint._monitor_candidates`."""
    return _get(callback, "_monitor_candidates", "ModelCheckpoint._monitor_candidates")(trainer)


def save_top_k(callback: ModelCheckpoint, trainer: pl.Trainer, candidates: dict[str, torch.Tensor]) -> None:
    """Save as the callback's `save_top_k`/`monitor` rules would at this step (replacing a worse kept file).
    Calls `ModelCheckpoint._save_topk_checkpoint`."""
    _get(callback, "_save_topk_checkpoint", "ModelCheckpoint._save_topk_checkpoint")(trainer, candidates)


def save_last(callback: ModelCheckpoint, trainer: pl.Trainer, candidates: dict[str, torch.Tensor]) -> None:
    """Write the callback's `last.ckpt` (when `save_last` is set). Calls `ModelCheckpoint._save_last_checkpoint`."""
    _get(callback, "_save_last_checkpoint", "ModelCheckpoint._save_last_checkpoint")(trainer, candidates)


def save_to(callback: ModelCheckpoint, trainer: pl.Trainer, filepath: str) -> None:
    """Write the checkpoint file `filepath` through the callback (its bookkeeping and loggers' notice).
    Calls `ModelCheckpoint._save_checkpoint`."""
    _get(callback, "_save_checkpoint", "ModelCheckpoint._save_checkpoint")(trainer, filepath)


def skips_saving(callback: ModelCheckpoint, trainer: pl.Trainer) -> bool:
    """Whether the callback would not save now (a sanity check, fast_dev_run, already saved at this step...).
    Calls `ModelCheckpoint._should_skip_saving_checkpoint`."""
    return bool(
        _get(callback, "_should_skip_saving_checkpoint", "ModelCheckpoint._should_skip_saving_checkpoint")(trainer)
    )


def checkpoint_path(callback: ModelCheckpoint, trainer: pl.Trainer, candidates: dict[str, torch.Tensor]) -> str:
    """The file the callback's `filename` pattern names for these metrics.
    Calls `ModelCheckpoint._get_metric_interpolated_filepath_name`."""
    name = _get(
        callback, "_get_metric_interpolated_filepath_name", "ModelCheckpoint._get_metric_interpolated_filepath_name"
    )
    return name(candidates, trainer)


# --- The CSV logger (`CSVLogger._experiment`, `._fs`; its `ExperimentWriter`) ---


class ExistingMetricsFileWriter(ExperimentWriter):
    """Lightning's CSV `ExperimentWriter` with a public hook for a `metrics.csv` already in the log folder.
    Lightning's writer deletes it in `_check_log_dir_exists`, which its `__init__` calls; this one calls
    `on_existing_metrics_file()` there instead, which a subclass defines (Lightning's own would also warn about
    a non-empty folder, which a cmvl run folder always is)."""

    def _check_log_dir_exists(self) -> None:
        self.on_existing_metrics_file()

    def on_existing_metrics_file(self) -> None:
        """Called once, from `__init__`, before anything is written; `self.metrics_file_path` may exist."""
        if os.path.isfile(self.metrics_file_path):
            os.remove(self.metrics_file_path)


def csv_logger_writer(logger: CSVLogger, make_writer: Callable[[], ExperimentWriter]) -> ExperimentWriter:
    """The logger's writer, made with `make_writer()` on first use (in the logger's folder, created here), as
    `CSVLogger.experiment` makes its own. Reads and writes `CSVLogger._experiment`; uses `CSVLogger._fs`."""
    if _get(logger, "_experiment", "CSVLogger._experiment") is None:
        _get(logger, "_fs", "CSVLogger._fs").makedirs(logger.root_dir, exist_ok=True)
        logger._experiment = make_writer()
    return logger._experiment


# --- PyTorch: the learning rate a scheduler reports ---


def set_reported_lr(scheduler: torch.optim.lr_scheduler.LRScheduler, lrs: list[float]) -> None:
    """Make `scheduler.get_last_lr()` (what Lightning's LearningRateMonitor logs) report `lrs`, after the optimizer's
    rates were set by hand. Writes `scheduler._last_lr` (PyTorch's private attribute; checked on torch 2.14.1)."""
    scheduler._last_lr = list(lrs)


check_installed_version()
