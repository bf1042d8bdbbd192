"""`cmvl.training.lightning_compat` on the installed Lightning: every private attribute it names is still there and
still does what cmvl relies on, so a Lightning upgrade fails here, by name. One tiny fit (a linear model, CPU,
a few steps) drives every function at the moment cmvl calls it."""

from __future__ import annotations

import ast
import csv
import inspect
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from cmvl.training import lightning_compat as compat

STEPS_PER_EPOCH = 4


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.val_batches = 0

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)}


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(STEPS_PER_EPOCH * 2, 2)), batch_size=2)


class Probe(pl.Callback):
    """Calls the compat functions where cmvl calls them and records what they saw."""

    def __init__(self) -> None:
        self.seen: dict[str, list] = {"logs": [], "last": [], "steps": []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen["logs"].append(compat.logs_this_step(trainer))
        self.seen["last"].append(compat.is_last_batch(trainer))
        self.seen["steps"].append(trainer.global_step)
        compat.log_step_metrics(trainer)  # as the preemption stop does mid-epoch

    def on_train_epoch_end(self, trainer, pl_module):
        compat.log_epoch_metrics(trainer)  # as the preemption stop does at an epoch end

    def on_train_end(self, trainer, pl_module):
        loop = trainer.fit_loop.epoch_loop
        before = (loop._batches_that_stepped, trainer.fit_loop.epoch_progress.current.completed)
        val_before = pl_module.val_batches
        compat.run_fit_validation(trainer)
        self.seen["validated"] = pl_module.val_batches - val_before
        self.seen["counters_kept"] = before == (
            loop._batches_that_stepped,
            trainer.fit_loop.epoch_progress.current.completed,
        )
        self.seen["training_after"] = trainer.training
        best = next(c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint))
        candidates = compat.monitor_candidates(best, trainer)
        self.seen["candidates"] = sorted(candidates)
        self.seen["skips"] = compat.skips_saving(best, trainer)
        path = compat.checkpoint_path(best, trainer, candidates)
        self.seen["path"] = path
        compat.save_to(best, trainer, path)
        compat.save_top_k(best, trainer, candidates)
        compat.save_last(best, trainer, candidates)


def _fit(tmp_path: Path, *, max_steps: int, ckpt_path: str | None = None, wrap=None) -> tuple:
    probe = Probe()
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        filename="step{step}",
        monitor="step",
        mode="max",
        save_top_k=2,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        log_every_n_steps=2,
        logger=CSVLogger(tmp_path, name="logs"),
        callbacks=[checkpoint, probe],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10,
    )
    if wrap is not None:
        compat.wrap_restore_steps(trainer, wrap)
    trainer.fit(TinyModule(), _loader(), _loader(), ckpt_path=ckpt_path)
    return trainer, probe, checkpoint


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("compat")
    return (tmp_path, *_fit(tmp_path, max_steps=STEPS_PER_EPOCH + 2))  # into the second epoch, ending mid-epoch


def test_the_logger_connector_and_the_loop_counters(fitted):
    tmp_path, trainer, probe, _ = fitted
    assert probe.seen["steps"] == [1, 2, 3, 4, 5, 6]
    assert probe.seen["logs"] == [step % 2 == 0 for step in (1, 2, 3, 4, 5, 6)]  # log_every_n_steps=2
    assert probe.seen["last"] == [False, False, False, True, False, False]
    rows = list(csv.DictReader((Path(trainer.logger.log_dir) / "metrics.csv").open()))
    assert any(row.get("train/loss_epoch") for row in rows)  # log_epoch_metrics handed the epoch's metrics over


def test_the_fit_validation_runs_and_restores_the_counters(fitted):
    _, trainer, probe, _ = fitted
    assert probe.seen["validated"] == STEPS_PER_EPOCH  # the whole val loader, once
    assert probe.seen["counters_kept"] and probe.seen["training_after"]
    assert trainer.callback_metrics["val/loss"] is not None


def test_model_checkpoint_steps(fitted):
    tmp_path, trainer, probe, checkpoint = fitted
    assert {"epoch", "step", "val/loss"} <= set(probe.seen["candidates"])
    assert probe.seen["skips"] is True  # the callback saved at this very step already (its last train batch)
    assert probe.seen["path"] == str(tmp_path / "ckpt" / f"step{trainer.global_step}.ckpt")
    assert Path(probe.seen["path"]).is_file() and (tmp_path / "ckpt" / "last.ckpt").is_file()
    assert probe.seen["path"] in checkpoint.best_k_models


def test_the_restore_steps_are_wrapped(fitted, tmp_path):
    source, trainer, _, _ = fitted
    called = []

    def wrap(step):
        def run(*args, **kwargs):
            called.append(step.__name__)
            return step(*args, **kwargs)

        return run

    resumed, _, _ = _fit(
        tmp_path, max_steps=trainer.global_step + 1, ckpt_path=str(source / "ckpt" / "last.ckpt"), wrap=wrap
    )
    assert called == list(compat.RESTORE_STEPS)
    assert resumed.global_step == trainer.global_step + 1


def test_an_existing_metrics_file_goes_through_the_hook(tmp_path):
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "metrics.csv").write_text("step,x\n0,1\n")
    seen = []

    class Keeping(compat.ExistingMetricsFileWriter):
        def on_existing_metrics_file(self) -> None:
            seen.append(Path(self.metrics_file_path).read_text())

    Keeping(log_dir=str(log_dir))
    assert seen == ["step,x\n0,1\n"]  # Lightning's writer called the hook in __init__, before deleting anything
    compat.ExistingMetricsFileWriter(log_dir=str(log_dir))
    assert not (log_dir / "metrics.csv").exists()  # the default: a fresh file, as Lightning's writer does
    logger = CSVLogger(tmp_path / "root", name="run")
    made = []
    writer = compat.csv_logger_writer(
        logger, lambda: made.append(1) or compat.ExistingMetricsFileWriter(log_dir=logger.log_dir)
    )
    assert compat.csv_logger_writer(logger, lambda: made.append(2)) is writer and made == [1]
    assert Path(logger.root_dir).is_dir()


def test_the_reported_learning_rate():
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    compat.set_reported_lr(scheduler, [0.25])
    assert scheduler.get_last_lr() == [0.25]


def _private_names() -> set[str]:
    """Every private name the compat module reaches for: `x._name` attributes, and the names it looks up by string
    (its own private helpers are plain names, so neither)."""
    tree = ast.parse(inspect.getsource(compat))
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")}
    strings = {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier()
    }
    return attributes | {name for name in strings if name.startswith("_") and not name.startswith("__")}


def test_every_private_name_is_on_the_installed_lightning(fitted):
    _, trainer, _, checkpoint = fitted
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    owners = [
        trainer,
        trainer._logger_connector,
        trainer._checkpoint_connector,
        trainer.fit_loop,
        trainer.fit_loop.epoch_loop,
        checkpoint,
        trainer.logger,
        trainer.logger.experiment,
        scheduler,
    ]
    missing = sorted(name for name in _private_names() if not any(hasattr(owner, name) for owner in owners))
    assert not missing, f"private names lightning_compat uses that pytorch-lightning {pl.__version__} lacks: {missing}"
    assert {"_batches_that_stepped", "_save_topk_checkpoint", "_checkpoint_connector", "_last_lr"} <= _private_names()


def test_a_missing_attribute_is_one_line_naming_it():
    class OldTrainer:
        pass

    with pytest.raises(compat.LightningAPIError) as err:
        compat.logs_this_step(OldTrainer())
    message = str(err.value)
    assert "Trainer._logger_connector" in message and str(compat.SUPPORTED) in message and "\n" not in message
    assert err.value.exit_code == 2


def test_a_version_outside_the_checked_range_warns_once_and_goes_on():
    assert compat.check_installed_version()  # the installed one is inside
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert compat.check_installed_version("2.6.0") and not caught
        assert not compat.check_installed_version("2.7.0")
        assert not compat.check_installed_version("2.3.3")
    assert [w.category for w in caught] == [compat.UntestedLightningWarning] * 2
    assert "pytorch-lightning 2.7.0 is outside" in str(caught[0].message)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default: once per place
        for _ in range(3):
            compat.check_installed_version("3.0.0")
    assert len(caught) == 1
