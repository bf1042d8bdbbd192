"""Atomic checkpoint files: a crash during a save never leaves a partial file under a final name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from cmvl.atomic_file import atomic_write
from cmvl.errors import CheckpointError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename over the final name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        try:
            with atomic_write(path, "wb", fsync=True) as f:
                torch.save(checkpoint, f)
        except OSError as err:  # a full disk (ENOSPC), a quota (EDQUOT), a folder gone: the temp file is removed
            raise CheckpointError(
                f"could not write checkpoint {path} ({err.strerror or err}); the earlier checkpoints are intact, "
                f"the last good one is {last_good_checkpoint(Path(path).parent) or 'none yet'}: free space and "
                "continue with resume=auto and the same run dir"
            ) from None


def last_good_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The checkpoint `resume=auto` would continue from (the valid one with the highest global step)."""
    from cmvl.training.resume import find_resume_checkpoint

    return find_resume_checkpoint("auto", checkpoint_dir)[0]
