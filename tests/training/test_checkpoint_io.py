"""Atomic checkpoint saves: a failure in the middle of writing leaves the previous checkpoint loadable and no
partial file under any name."""

from __future__ import annotations

import pytest
import torch

from cmvl.errors import CheckpointError
from cmvl.training.checkpoint_io import AtomicCheckpointIO


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.arange(1000.0)}, path)

    real_save = torch.save

    def save_then_die(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # bytes are written ...
        raise OSError("disk full")  # ... then the process fails before the file is complete and renamed

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(CheckpointError, match="disk full"):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(1000)}, path)
    monkeypatch.setattr(torch, "save", real_save)

    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], torch.arange(1000.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left behind
