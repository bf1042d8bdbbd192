"""Writing an evaluation's results: one predictions file per task (the task's official results format) and
metrics.json (the metrics, which files hold the predictions and how many)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmvl.atomic_file import write_json_atomic

if TYPE_CHECKING:
    from cmvl.evaluation.score import SplitScores

METRICS_FILE = "metrics.json"


def predictions_file(out_dir: Path, task: str, split: str) -> Path:
    return out_dir / f"predictions_{task}_{split}.json"


def write_results(
    scores: SplitScores, out_dir: Path, *, checkpoint: Path, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Writes `predictions_<task>_<split>.json` for each task and `metrics.json` into `out_dir` (each file
    atomically); returns what metrics.json holds (`extra`: more of it, e.g. the attack's settings)."""
    files, counts = {}, {}
    for name, predictions in scores.predictions.items():
        path = predictions_file(out_dir, name, scores.split)
        write_json_atomic(path, predictions)
        files[name], counts[name] = str(path), _count(predictions)
    result = {
        "checkpoint": str(checkpoint),
        "split": scores.split,
        "metrics": scores.metrics,
        # One task: its file and count; several: task → file / count.
        "predictions_file": _single_or_all(files),
        "num_predictions": _single_or_all(counts),
        **(extra or {}),
    }
    write_json_atomic(out_dir / METRICS_FILE, result)
    return result


def _count(predictions: list | dict) -> int:
    return len(predictions) if isinstance(predictions, list) else sum(map(len, predictions.values()))


def _single_or_all(by_task: dict[str, Any]) -> Any:
    return next(iter(by_task.values())) if len(by_task) == 1 else by_task
