"""`VLLitModule`: optimisation and logging around a `VisionLanguageModel`; everything task-specific is asked of
the task."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from cmvl.models.vl_model import VisionLanguageModel
from cmvl.tasks.base import Task
from cmvl.training.optim import build_scheduler, param_groups, set_total_steps

CHECKPOINT_KEY = "cmvl"  # where the resolved config and the data state live inside a checkpoint


class VLLitModule(pl.LightningModule):
    def __init__(
        self, *, model: VisionLanguageModel, task: Task, optim: dict[str, Any], run_state: dict[str, Any]
    ) -> None:
        super().__init__()
        self.model, self.task = model, task
        self.optim_cfg = optim
        self.run_state = run_state  # plain containers: resolved config + data state; saved in every checkpoint
        self.val_metric = task.make_metric()
        self.test_metric = task.make_metric()
        self.test_predictions: list[dict[str, Any]] = []
        self.score_test = True  # evaluation of a split without annotations only predicts
        self.val_history: list[dict[str, float]] = []

    def metric_key(self, stage: str, name: str) -> str:
        return f"{stage}/{self.task.name}/{name}"

    @property
    def monitor(self) -> str:
        return self.metric_key("val", self.task.monitor_key)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self.task.forward(self.model, batch)
        loss = self.task.loss(outputs, batch)
        # A tensor, not a float: Lightning reduces it at logging intervals, no host sync per step.
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.task.update_metric(self.val_metric, self.task.forward(self.model, batch), batch)

    def on_validation_epoch_end(self) -> None:
        values = {self.metric_key("val", k): v for k, v in self.val_metric.compute().items()}
        self.val_metric.reset()
        self.log_dict(values, prog_bar=False)
        if not self.trainer.sanity_checking:
            self.val_history.append(
                {"epoch": self.current_epoch, "step": self.global_step, **{k: float(v) for k, v in values.items()}}
            )

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        outputs = self.task.forward(self.model, batch)
        if self.score_test:
            self.task.update_metric(self.test_metric, outputs, batch)
        self.test_predictions.extend(self.task.predictions(outputs, batch))

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        optimizer = cfg["optimizer"](param_groups(self.model, cfg["weight_decay"]))
        sched = cfg["scheduler"]
        scheduler = build_scheduler(
            optimizer,
            warmup_steps=sched.get("warmup_steps"),
            warmup_ratio=sched["warmup_ratio"],
            min_lr_ratio=sched["min_lr_ratio"],
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        # After the checkpoint (if any) is restored and the train loader is set up; see optim.WarmupCosine.
        for config in self.trainer.lr_scheduler_configs:
            set_total_steps(config.scheduler, int(self.trainer.estimated_stepping_batches))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {**self.run_state, "val_history": list(self.val_history)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_history = list(checkpoint.get(CHECKPOINT_KEY, {}).get("val_history", []))
