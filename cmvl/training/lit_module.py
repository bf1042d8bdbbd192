"""`VLLitModule`: optimisation and logging around a `VisionLanguageModel`; everything task-specific is asked of
the task."""

from __future__ import annotations

import functools
from typing import Any

import pytorch_lightning as pl
import torch

from cmvl.batch import Batch, TensorRecord
from cmvl.models.families.base import ModelFamily
from cmvl.tasks.base import Task
from cmvl.training.adversarial import Adversary
from cmvl.training.checkpoint_schema import CHECKPOINT_KEY, SCHEMA_KEY, SCHEMA_VERSION, upgrade_checkpoint
from cmvl.training.distillation import Distiller
from cmvl.training.ema import weight_average
from cmvl.training.lightning_compat import logs_this_step
from cmvl.training.nonfinite import NonFiniteGuard
from cmvl.training.optim import build_scheduler, param_groups, set_total_steps


class VLLitModule(pl.LightningModule):
    def __init__(
        self,
        *,
        model: ModelFamily,
        task: Task,
        optim: dict[str, Any],
        run_state: dict[str, Any],
        nonfinite: NonFiniteGuard | None = None,
        adversary: Adversary | None = None,
        ema_decay: float | None = None,
        distiller: Distiller | None = None,
    ) -> None:
        super().__init__()
        self.model, self.task = model, task
        self.optim_cfg = optim
        self.run_state = run_state  # plain containers: resolved config + data state; saved in every checkpoint
        self.nonfinite = nonfinite or NonFiniteGuard()
        self.adversary = adversary  # `adversarial.steps` > 0: perturbed forwards in the training loss
        self.attack: Any = None  # `cmvl eval attack=…` (cmvl/evaluation/attacks.py): test steps score attacked inputs
        self.skipping_step = False  # this step's loss was not finite somewhere: the optimizer step is skipped
        self.epoch_loss: tuple[int, torch.Tensor | float, int] = (-1, 0.0, 0)  # (epoch, sum, steps) of training loss
        self.val_metric = task.make_metric()
        self.test_metric = task.make_eval_metric()
        self.test_predictions: dict[str, list[dict[str, Any]]] = {}  # task name → per-batch prediction records
        self.score_test = True  # evaluation of a split without annotations only predicts
        self.test_values: dict[str, torch.Tensor] = {}  # the test metric's values, after `trainer.test`
        self.val_history: list[dict[str, float]] = []
        # `ema.decay`: the moving average of the weights (cmvl/training/ema.py), which validation scores
        self.ema = weight_average(model, ema_decay) if ema_decay is not None else None
        self.distiller = distiller  # `distill.teacher`: a plain object, so the teacher is no submodule (not saved)

    @property
    def evaluated_model(self) -> ModelFamily:
        """The weights validation scores: the moving average when `ema.decay` is on, else the model's own."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def monitor(self) -> str:
        return self.task.metric_key("val", self.task.monitor_key)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """The batch's tensors move (asynchronously from pinned memory); its texts, references and task name stay
        where they are. (Lightning's generic walk visits every string of every list: ~4 ms a step on CPU.)"""
        if not isinstance(batch, Batch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return batch.to(device, non_blocking=True)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.adversary is not None and self.adversary.active(self.global_step):
            outputs, loss = self.adversary.outputs_and_loss(self.model, self.task, batch)
        else:
            outputs = self.task.forward(self.model, batch)
            loss = self.task.loss(outputs, batch)
        if self.distiller is not None:
            loss = self.distiller.loss(loss, outputs, batch)
        self.skipping_step = self.nonfinite.should_skip(self, loss, batch_idx)
        if self.skipping_step:
            # Every process still runs the backward pass of this graph (a zero loss), so DDP's gradient all-reduce
            # stays matched; `on_before_optimizer_step` then drops the gradients: the optimizer changes nothing.
            return loss.nan_to_num(0.0, 0.0, 0.0) * 0.0
        # The epoch's mean loss is summed here, on the device (no host sync per step), and the step's loss goes to
        # Lightning only at the steps whose metrics it writes (`trainer.log_every_n_steps`): each `self.log` walks
        # Lightning's result objects, ~4.5 ms a step on CPU whether or not anything is written.
        epoch, total, steps = self.epoch_loss
        if epoch != self.current_epoch:
            total, steps = 0.0, 0
        self.epoch_loss = (self.current_epoch, total + loss.detach(), steps + 1)
        if logs_this_step(self.trainer):
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=1)
        return loss

    def on_train_epoch_end(self) -> None:
        epoch, total, steps = self.epoch_loss
        if epoch == self.current_epoch and steps:
            # sync_dist: the mean of every process's epoch loss, not rank 0's alone (one all-reduce an epoch)
            self.log(
                "train/loss_epoch",
                total / steps,
                on_step=False,
                on_epoch=True,
                prog_bar=True,
                batch_size=1,
                sync_dist=True,
            )

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> TensorRecord:
        outputs = self.task.eval_forward(self.evaluated_model, batch)
        self.task.update_metric(self.val_metric, outputs, batch)
        return outputs  # seen by callbacks (sample pictures), not kept by Lightning

    def _compute(self, metric: Any) -> dict[str, torch.Tensor]:
        """The task's metric values; in the precision context of the evaluation steps, since computing may run the
        model (retrieval's re-ranking)."""
        with self.trainer.precision_plugin.forward_context():
            return self.task.compute_metric(metric, self.evaluated_model)

    def on_validation_epoch_end(self) -> None:
        values = {self.task.metric_key("val", k): v for k, v in self._compute(self.val_metric).items()}
        self.val_metric.reset()
        self.log_dict(values, prog_bar=False)
        if not self.trainer.sanity_checking:
            self.val_history.append(
                {"epoch": self.current_epoch, "step": self.global_step, **{k: float(v) for k, v in values.items()}}
            )

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.attack is not None:
            outputs = self.attack.eval_outputs(self.evaluated_model, self.task, batch)
        else:
            outputs = self.task.eval_forward(self.evaluated_model, batch)
        if self.score_test:
            self.task.update_metric(self.test_metric, outputs, batch)
        self.test_predictions.setdefault(batch.task, []).extend(self.task.predictions(outputs, batch))

    def on_test_epoch_end(self) -> None:
        if self.score_test:
            self.test_values = self._compute(self.test_metric)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.skipping_step:  # parameters without a gradient: no update, no weight decay, no optimizer state change
            optimizer.zero_grad(set_to_none=True)
            self.skipping_step = False

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, not in `on_train_batch_end`: callbacks' batch-end hooks (step checkpoints, preemption) run before the
        # module's, and must save the average that includes this step.
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def configure_model(self) -> None:
        # trainer=fsdp (cmvl/training/fsdp.py): the strategy shards the model's blocks and this module here, before
        # the optimizer is built over the sharded parameters; other strategies have no `shard` and change nothing.
        shard = getattr(self.trainer.strategy, "shard", None)
        if shard is not None:
            shard(self)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        build_optimizer = cfg["optimizer"]
        if self._grad_scaler() is not None and self.trainer.gradient_clip_val:
            # fp16: a fused optimizer unscales inside its step, too late to clip; clipping needs unfused AdamW.
            build_optimizer = functools.partial(build_optimizer, fused=False)
        optimizer = build_optimizer(param_groups(self.model, cfg["weight_decay"]))
        sched = cfg["scheduler"]
        scheduler = build_scheduler(
            optimizer,
            warmup_steps=sched.get("warmup_steps"),
            warmup_ratio=sched["warmup_ratio"],
            min_lr_ratio=sched["min_lr_ratio"],
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _grad_scaler(self) -> Any:
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if not gradient_clip_val:
            return
        if self._grad_scaler() is None and optimizer.defaults.get("fused"):
            # Lightning's mixed-precision plugin refuses to clip for any fused optimizer, but without a gradient
            # scaler (bf16) the gradients here are the true ones, so clipping them directly is exact.
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_fit_start(self) -> None:
        if self.distiller is not None:
            self.distiller.to(self.device, next(self.model.parameters()).dtype)

    def on_train_start(self) -> None:
        # After the checkpoint (if any) is restored and the train loader is set up; see optim.WarmupCosine.
        for config in self.trainer.lr_scheduler_configs:
            set_total_steps(config.scheduler, int(self.trainer.estimated_stepping_batches))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            SCHEMA_KEY: SCHEMA_VERSION,  # the layout of this file; an older one is upgraded on load
            **self.run_state,
            "val_history": list(self.val_history),
            "nonfinite": self.nonfinite.state_dict(),
            # A run resumed mid-epoch logs the same epoch mean loss as an uninterrupted one.
            "epoch_loss": [self.epoch_loss[0], float(self.epoch_loss[1]), self.epoch_loss[2]],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before it loads the weights (resume): a file of an older layout is upgraded first.
        upgrade_checkpoint(checkpoint)
        state = checkpoint.get(CHECKPOINT_KEY, {})
        self.val_history = list(state.get("val_history", []))
        self.nonfinite.load_state_dict(state.get("nonfinite", {}))
        epoch, total, steps = state.get("epoch_loss", (-1, 0.0, 0))
        self.epoch_loss = (int(epoch), torch.tensor(total, dtype=torch.float32), int(steps))
