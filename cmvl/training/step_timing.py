"""`callbacks=step_timing`: how fast training steps run and how much of the wall time lies outside them.

A measuring tool (scripts/bench_train.py uses it): on a GPU it waits for the device at the end of every step, a
host-device sync that a normal run does not make, so choose it to measure, not to train.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from cmvl.atomic_file import write_json_atomic
from cmvl.log import log


class StepTiming(pl.Callback):
    """Per-step time and samples/s over the training steps after the first `warmup`, and the share of wall time
    spent between steps (the loader's next batch plus the loop's bookkeeping: an upper bound on data wait), written
    to `out` (JSON) at the end of fit and logged in one line."""

    def __init__(self, *, out: str, warmup: int = 5) -> None:
        if warmup < 0:
            raise ValueError(f"callbacks.step_timing.warmup={warmup}: must be >= 0")
        self.out, self.warmup = Path(out), warmup
        self.step_seconds: list[float] = []
        self.between_seconds: list[float] = []
        self.samples = 0
        self._started: float | None = None
        self._ended: float | None = None
        self._seen = 0

    def _now(self, trainer: pl.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        self._started = self._now(trainer)
        if self._ended is not None and self._seen >= self.warmup:
            self.between_seconds.append(self._started - self._ended)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        self._ended = self._now(trainer)
        self._seen += 1
        if self._seen > self.warmup and self._started is not None:
            self.step_seconds.append(self._ended - self._started)
            self.samples += len(batch) if hasattr(batch, "__len__") else 0

    def summary(self) -> dict[str, float | int]:
        """Steps measured, mean step time, samples/s over steps plus gaps, and the between-steps share."""
        steps, between = sum(self.step_seconds), sum(self.between_seconds)
        wall = steps + between
        return {
            "steps": len(self.step_seconds),
            "warmup": self.warmup,
            "step_seconds_mean": steps / len(self.step_seconds) if self.step_seconds else float("nan"),
            "samples_per_second": self.samples / wall if wall > 0 else float("nan"),
            "between_steps_share": between / wall if wall > 0 else float("nan"),
        }

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        summary = self.summary()
        write_json_atomic(self.out, summary)
        log.info(
            f"step timing ({summary['steps']} steps after {self.warmup} warm-up): "
            f"{summary['step_seconds_mean'] * 1000:.1f} ms/step, {summary['samples_per_second']:.1f} samples/s, "
            f"{summary['between_steps_share']:.1%} of the time between steps; {self.out}"
        )
