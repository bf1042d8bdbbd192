"""Atomic checkpoint files: a crash during a save never leaves a partial file under a final name."""

from __future__ import annotations

import os
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from cmvl.atomic_file import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename over the final name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_write(path, "wb", fsync=True) as f:
            torch.save(checkpoint, f)
