"""Reading cmvl checkpoints safely (`weights_only=True`) with one clear error for a bad file."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from cmvl.errors import CheckpointError
from cmvl.training.lit_module import CHECKPOINT_KEY


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"not a readable checkpoint: {path} ({reason[:200]})") from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"not a cmvl checkpoint (no '{CHECKPOINT_KEY}' section): {path}")
    return checkpoint
