"""Several tasks trained jointly: shared encoders and fusion, one head per task, one objective L = Σ λ_t L_t."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from cmvl.batch import Batch, TensorRecord
from cmvl.errors import ConfigError
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.tasks.base import SampleNote, SplitTargets, Task

SAMPLING_RULES = ("proportional", "round_robin", "weighted")


class TaskMetrics(nn.Module):
    """One metric per task; `MultiTask.compute_metric` gives `<task>/<metric>` keys, logged as
    `val/<task>/<metric>`."""

    def __init__(self, metrics: dict[str, nn.Module]) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict(metrics)

    @property
    def names(self) -> list[str]:
        return [f"{name}/{key}" for name, metric in self.metrics.items() for key in metric.names]

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()


class MultiTask(Task):
    """The tasks of `tasks` (name → task) on one model. Every batch comes from one task (`batch.task`); the
    data module draws them by `sampling`:

    - `proportional`: each task's batches once per epoch, interleaved in a seeded random order (a task with more
      data gets more steps);
    - `round_robin`: the tasks in turn, each task's loader restarting when it runs out;
    - `weighted`: a seeded random task per step with probability ∝ `weights`.

    The loss of a batch of task t is λ_t · L_t (`weights`), so an epoch's summed loss is Σ_t λ_t Σ L_t: the joint
    objective. `monitor` (`<task>/<metric>`) picks the best checkpoint.
    """

    name = "multitask"
    epochs = 4  # default budget (trainer.max_epochs=null), measured in the README
    metric_prefix = ""

    def __init__(
        self,
        *,
        tasks: dict[str, Task],
        weights: dict[str, float] | None = None,
        sampling: str = "proportional",
        monitor: str | None = None,
    ) -> None:
        if not tasks:
            raise ConfigError("task.tasks: list at least one task")
        for key, task in tasks.items():
            if key != task.name:
                raise ConfigError(f"task.tasks.{key}: the key must be the task's name ('{task.name}')")
        if sampling not in SAMPLING_RULES:
            raise ConfigError(f"task.sampling={sampling}: choose one of {', '.join(SAMPLING_RULES)}")
        weights = dict(weights or {})
        unknown = set(weights) - set(tasks)
        if unknown:
            raise ConfigError(f"task.weights: {', '.join(sorted(unknown))} not in task.tasks ({', '.join(tasks)})")
        self.tasks = dict(tasks)
        self.weights = {name: float(weights.get(name, 1.0)) for name in tasks}
        if any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
            raise ConfigError(f"task.weights={self.weights}: non-negative, at least one positive")
        self.sampling = sampling
        first = next(iter(self.tasks.values()))
        self.monitor_key = monitor or f"{first.name}/{first.monitor_key}"
        monitored = self.monitor_key.split("/")[0]
        if monitored not in self.tasks:
            raise ConfigError(f"task.monitor={self.monitor_key}: must be <task>/<metric> with a task of task.tasks")
        self.monitor_mode = self.tasks[monitored].monitor_mode
        self.allows_random_crop = all(t.allows_random_crop for t in self.tasks.values())
        self.parts = frozenset().union(*(t.parts for t in self.tasks.values()))
        # The families every member runs on (the members share one model); a family runs a task when it is one of
        # the task's families or derives from one (the detector family is a vl_fusion model too).
        candidates = dict.fromkeys(f for t in self.tasks.values() for f in t.families)
        self.families = tuple(f for f in candidates if all(issubclass(f, t.families) for t in self.tasks.values()))

    def members(self) -> list[Task]:
        return list(self.tasks.values())

    # -- data side: the data module asks each member ---------------------------------------------------------
    def fit(self, train_table: pa.Table) -> None:
        raise TypeError("a multitask is fitted task by task (members())")

    def texts(self, table: pa.Table) -> list[str] | None:
        raise TypeError("a multitask has no table of its own (members())")

    def targets(self, table: pa.Table) -> SplitTargets:
        raise TypeError("a multitask has no table of its own (members())")

    def state_dict(self) -> dict[str, Any]:
        return {name: task.state_dict() for name, task in self.tasks.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, task in self.tasks.items():
            task.load_state_dict(state[name])

    def bind_tokenizer(self, tokenizer: PreTrainedTokenizerFast) -> None:
        for task in self.tasks.values():
            task.bind_tokenizer(tokenizer)

    # -- model side: dispatch on the batch's task ------------------------------------------------------------
    def build_head(self, dim: int) -> nn.Module:
        raise TypeError("a multitask has one head per member (build_heads)")

    def build_heads(self, dim: int) -> dict[str, nn.Module]:
        return {name: task.build_head(dim) for name, task in self.tasks.items()}

    def forward(self, model: VisionLanguageModel, batch: Batch) -> TensorRecord:
        return self.tasks[batch.task].forward(model, batch)

    def eval_forward(self, model: VisionLanguageModel, batch: Batch) -> TensorRecord:
        return self.tasks[batch.task].eval_forward(model, batch)

    def loss(self, outputs: TensorRecord, batch: Batch) -> torch.Tensor:
        return self.weights[batch.task] * self.tasks[batch.task].loss(outputs, batch)

    def make_metric(self) -> TaskMetrics:
        return TaskMetrics({name: task.make_metric() for name, task in self.tasks.items()})

    def make_eval_metric(self) -> TaskMetrics:
        return TaskMetrics({name: task.make_eval_metric() for name, task in self.tasks.items()})

    def compute_metric(self, metric: TaskMetrics, model: VisionLanguageModel) -> dict[str, torch.Tensor]:
        values = {}
        for name, task in self.tasks.items():
            member = metric.metrics[name]
            if member.update_count:  # a task with no validation batches in this round has nothing to report
                values.update({f"{name}/{k}": v for k, v in task.compute_metric(member, model).items()})
        return values

    def epoch_pictures(self, metric: TaskMetrics) -> dict[str, Any]:
        return {
            f"{name}_{key}": picture
            for name, task in self.tasks.items()
            if metric.metrics[name].update_count
            for key, picture in task.epoch_pictures(metric.metrics[name]).items()
        }

    def member_metric(self, metric: TaskMetrics, name: str) -> nn.Module:
        return metric.metrics[name]

    def update_metric(self, metric: TaskMetrics, outputs: TensorRecord, batch: Batch) -> None:
        self.tasks[batch.task].update_metric(metric.metrics[batch.task], outputs, batch)

    def predictions(self, outputs: TensorRecord, batch: Batch) -> list[dict[str, Any]]:
        return self.tasks[batch.task].predictions(outputs, batch)

    def sample_notes(self, outputs: TensorRecord, batch: Batch, count: int) -> list[SampleNote]:
        notes = self.tasks[batch.task].sample_notes(outputs, batch, count)
        for note in notes:
            note.lines.insert(0, f"[{batch.task}]")
        return notes
