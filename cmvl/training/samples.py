"""Sample predictions of each validation epoch as one picture: a grid of images, each with its text (question,
predicted and true answer; generated and reference caption; predicted and true box; top retrieved captions),
written to `<run dir>/samples/epoch<NNN>.png` and logged to TensorBoard and wandb when they are active."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw, ImageFont

from cmvl.atomic_file import atomic_write
from cmvl.batch import Batch, TensorRecord
from cmvl.tasks.base import SampleNote

CELL = 192  # pixels per image side in the picture
COLUMNS = 4
LINE_HEIGHT = 13
FONT_SIZE = 11


def _to_pil(image: torch.Tensor) -> Image.Image:
    """A batch image (uint8 C×H×W, as loaders deliver them) as an RGB picture of CELL×CELL pixels."""
    array = image.cpu().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    return picture.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)


def render_grid(panels: list[tuple[torch.Tensor, SampleNote]]) -> Image.Image:
    """One picture: COLUMNS images per row, each with its boxes drawn and its lines of text below it."""
    font = ImageFont.load_default(size=FONT_SIZE)
    width_chars = CELL // 6
    wrapped = [[w for line in note.lines for w in textwrap.wrap(line, width_chars) or [""]] for _, note in panels]
    rows = [range(i, min(i + COLUMNS, len(panels))) for i in range(0, len(panels), COLUMNS)]
    heights = [CELL + 6 + LINE_HEIGHT * max(len(wrapped[i]) for i in row) for row in rows]
    canvas = Image.new("RGB", (COLUMNS * (CELL + 4) + 4, sum(heights) + 4 * len(rows) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    top = 4
    for row, height in zip(rows, heights):
        for column, i in enumerate(row):
            image, note = panels[i]
            left = 4 + column * (CELL + 4)
            canvas.paste(_to_pil(image), (left, top))
            for box, colour in note.boxes:
                x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) * CELL for v in box)
                draw.rectangle([left + x0, top + y0, left + x1, top + y1], outline=colour, width=2)
            for k, line in enumerate(wrapped[i]):
                draw.text((left, top + CELL + 4 + k * LINE_HEIGHT), line, fill="black", font=font)
        top += height + 4
    return canvas


class SamplePredictions(pl.Callback):
    """Keeps the first `count` samples of the first validation batch of each loader (each task of a multitask)
    and, at the end of every `every_n_epochs`-th validation epoch, draws them (global rank 0 only)."""

    def __init__(self, out_dir: str | Path, *, count: int = 8, every_n_epochs: int = 1) -> None:
        self.out_dir, self.count, self.every_n_epochs = Path(out_dir), count, every_n_epochs
        self._panels: list[tuple[torch.Tensor, SampleNote]] = []

    def _due(self, trainer: pl.Trainer) -> bool:
        return (
            self.count > 0
            and trainer.is_global_zero
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._panels = []

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: TensorRecord | None, batch: Batch,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if batch_idx != 0 or outputs is None or not self._due(trainer):
            return
        for note in pl_module.task.sample_notes(outputs, batch, self.count):
            self._panels.append((batch.images[note.image_row].detach().cpu(), note))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._panels or not self._due(trainer):
            return
        picture = render_grid(self._panels)
        self._panels = []
        with atomic_write(self.out_dir / f"epoch{trainer.current_epoch:03d}.png", "wb") as f:
            picture.save(f, format="PNG")
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.TensorBoardLogger):
                logger.experiment.add_image("val/samples", np.asarray(picture), trainer.global_step, dataformats="HWC")
            elif isinstance(logger, pl.loggers.WandbLogger):
                logger.log_image(key="val/samples", images=[picture], step=trainer.global_step)
