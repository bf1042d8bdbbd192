"""A `Batch` around a task's collated targets, for unit tests of a task's loss, metric and predictions that need no
images or texts (each sample gets its own blank image)."""

from __future__ import annotations

import torch

from cmvl.batch import Batch, TensorRecord


def batch_of(targets: TensorRecord, size: int, *, task: str = "vqa", texts: list[str] | None = None) -> Batch:
    rows = torch.arange(size)
    return Batch(
        images=torch.zeros(size, 3, 4, 4, dtype=torch.uint8),
        image_index=rows,
        image_key=rows,
        index=rows,
        task=task,
        targets=targets,
        texts=texts,
    )
