"""Exact resume: random-number-generator state in every checkpoint, and picking the checkpoint to resume from.

Lightning restores weights, optimizer, scheduler, loop counters and the stateful train loader's position, but no
RNG state; `RNGStateCallback` adds that (python, numpy, torch CPU and CUDA, one entry per rank), so dropout masks
after a resume are the ones the uninterrupted run would have drawn (tests/training/test_resume.py: mid-epoch, first
step, epoch's last batch, loader workers; the README says what is not covered).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist

from cmvl.errors import CheckpointError
from cmvl.training.checkpoints import load_checkpoint

RNG_KEY = "cmvl_rng"  # checkpoint section: list of per-rank RNG states, index = global rank


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain containers (loadable with `torch.load(weights_only=True)`)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt_state, gauss = random.getstate()
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStateCallback(pl.Callback):
    """Saves every rank's RNG state with each checkpoint; restores this rank's when training (re)starts."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = capture_rng_state()
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            states: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint[RNG_KEY] = states

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get(RNG_KEY) or []
        rank = trainer.global_rank
        self._pending = states[rank] if rank < len(states) else None

    # Restored right before the first resumed step: nothing between a save and the next step draws from the global
    # RNG in the uninterrupted run (the loaders draw their seeds from their own generators, see
    # `ImageGroupedSampler`), so whatever Lightning's restart does in between cannot shift the stream.
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None


def find_resume_checkpoint(resume: str, checkpoint_dir: Path) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """`resume=never` → nothing; a path → that file (checked); `auto` → the valid checkpoint in `checkpoint_dir`
    with the highest global step (file times are not trusted). Returns the path, the checkpoint as loaded
    (memory-mapped: tensors are read only when used) and one line per unreadable file skipped."""
    if resume == "never":
        return None, None, []
    if resume != "auto":
        return Path(resume), load_checkpoint(resume, mmap=True), []  # raises CheckpointError with one line
    best: tuple[int, int, Path, dict[str, Any]] | None = None
    skipped = []
    for path in sorted(checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else []:
        try:
            checkpoint = load_checkpoint(path, mmap=True)
        except CheckpointError as err:
            skipped.append(f"skipping {err}")
            continue
        # On a tie prefer a step checkpoint / last.ckpt over best.ckpt (best may be older in loop state).
        key = (int(checkpoint.get("global_step", -1)), 0 if path.stem == "best" else 1)
        if best is None or key > best[:2]:
            best = (*key, path, checkpoint)
    return (best[2], best[3], skipped) if best else (None, None, skipped)
