"""Sample predictions of each validation epoch as one picture: a grid of images, each with its text (question,
predicted and true answer; generated and reference caption; predicted and true box; top retrieved captions),
written to `<run dir>/samples/epoch<NNN>.png` and logged to TensorBoard and wandb when they are active."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

from cmvl.atomic_file import atomic_write
from cmvl.batch import Batch, TensorRecord
from cmvl.tasks.base import SampleNote
from cmvl.training.sample_pictures import CELL as CELL  # the picture's layout, also a name of this module
from cmvl.training.sample_pictures import COLUMNS as COLUMNS
from cmvl.training.sample_pictures import (
    add_sample_maps,
    check_sample_maps,
    legend_lines,
    member_of,
    render_grid,
    spread_over_images,
)


class SamplePredictions(pl.Callback):
    """Keeps `count` samples of the first validation batch of each loader (each task of a multitask), one per
    distinct image first, and, at the end of every `every_n_epochs`-th validation epoch, draws them (global rank 0
    only). With `attention`, each sample's image shows the Grad-CAM map of its prediction (cmvl.explain)."""

    def __init__(
        self, out_dir: str | Path, *, count: int = 8, every_n_epochs: int = 1, attention: bool = False
    ) -> None:
        self.out_dir, self.count, self.every_n_epochs = Path(out_dir), count, every_n_epochs
        self.attention = attention
        self._panels: list[tuple[torch.Tensor, SampleNote]] = []
        self._legends: list[str] = []  # the marks of the tasks drawn (Task.sample_legend)
        self._special_ids: list[int] = []  # the tokenizer's special tokens: no words of a text, no maps

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.attention:  # refused before the first step when the fusion has no maps
            datamodule = trainer.datamodule
            check_sample_maps(pl_module.task, pl_module.model, image_size=int(datamodule.image_cfg["size"]))
            self._special_ids = list(datamodule.tokenizer.all_special_ids)

    def _due(self, trainer: pl.Trainer) -> bool:
        return (
            self.count > 0
            and trainer.is_global_zero
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._panels, self._legends = [], []

    def _notes(self, pl_module: pl.LightningModule, outputs: TensorRecord, batch: Batch) -> list[SampleNote]:
        """The samples to draw of a batch: `count` of them spread over its distinct images, with their maps."""
        notes = spread_over_images(pl_module.task.sample_notes(outputs, batch, len(batch)), self.count)
        legend = member_of(pl_module.task, batch).sample_legend
        self._legends += [legend] if legend else []
        if self.attention:
            add_sample_maps(pl_module.task, pl_module.evaluated_model, batch, notes, self._special_ids)
        return notes

    def _draw(self) -> Image.Image:
        """The picture of the kept samples, with the legend of their marks."""
        return render_grid(self._panels, legend_lines(self._panels, self._legends))

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: TensorRecord | None, batch: Batch,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if batch_idx != 0 or outputs is None or not self._due(trainer):
            return
        for note in self._notes(pl_module, outputs, batch):
            image = batch.images[note.image_row] if note.image is None else note.image
            self._panels.append((image.detach().cpu(), note))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The task's pictures of the whole epoch (a confusion matrix) read the validation metric, which the
        # LightningModule's own hook (run after the callbacks') resets; every process gathers its state.
        epoch_due = (
            self.count > 0 and not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )
        pictures = pl_module.task.epoch_pictures(pl_module.val_metric) if epoch_due else {}
        for name, picture in pictures.items() if trainer.is_global_zero else ():
            self._save(trainer, picture, f"{name}_epoch{trainer.current_epoch:03d}.png", f"val/{name}")
        if not self._panels or not self._due(trainer):
            return
        picture = self._draw()
        self._panels = []
        self._save(trainer, picture, f"epoch{trainer.current_epoch:03d}.png", "val/samples")

    def _save(self, trainer: pl.Trainer, picture: Image.Image, file_name: str, key: str) -> None:
        with atomic_write(self.out_dir / file_name, "wb") as f:
            picture.save(f, format="PNG")
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.TensorBoardLogger):
                logger.experiment.add_image(key, np.asarray(picture), trainer.global_step, dataformats="HWC")
            elif isinstance(logger, pl.loggers.WandbLogger):
                logger.log_image(key=key, images=[picture], step=trainer.global_step)
