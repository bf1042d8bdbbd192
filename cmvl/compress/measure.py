"""Measuring a model for the compression report: its validation metric (the task's own, as `cmvl eval` computes
it), the size of its file, and its latency at a batch size, all on the CPU with the threads torch uses."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cmvl.batch import Batch, TensorRecord
from cmvl.tasks.base import Task

Forward = Callable[[Batch], TensorRecord]  # a batch → the task's evaluation record


def score(forward: Forward, task: Task, batches: list[Batch]) -> dict[str, float]:
    """The task's validation metrics of `forward` over `batches` (all of a split: the same number cmvl eval gives)."""
    metric = task.make_metric()
    with torch.no_grad():
        for batch in batches:
            task.update_metric(metric, forward(batch), batch)
    return {k: float(v) for k, v in metric.compute().items()}


def rows_of(batch: Batch, count: int) -> Batch:
    """A batch of `count` samples (the rows of `batch` repeated as needed), one image per sample, no targets."""
    pick = torch.arange(count) % len(batch)
    rows = torch.arange(count)
    texts = None if batch.input_ids is None else (batch.input_ids[pick], batch.attention_mask[pick])
    return Batch(
        images=batch.images[batch.image_index[pick]],
        image_index=rows,
        image_key=rows,
        index=rows,
        task=batch.task,
        targets=None,
        input_ids=None if texts is None else texts[0],
        attention_mask=None if texts is None else texts[1],
    )


def latency_ms(forward: Forward, batch: Batch, *, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Wall-clock milliseconds of `forward(batch)`: the median and the fastest of `repeats` timed calls."""
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            forward(batch)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measure(
    forward: Forward,
    task: Task,
    batches: list[Batch],
    file: Path,
    *,
    batch_sizes: tuple[int, ...],
    repeats: int,
) -> dict[str, Any]:
    """Metrics, file size and latency at each batch size of one model."""
    latency = {str(b): latency_ms(forward, rows_of(batches[0], b), repeats=repeats) for b in batch_sizes}
    return {"metrics": score(forward, task, batches), "size_mb": size_mb(file), "latency": latency}
