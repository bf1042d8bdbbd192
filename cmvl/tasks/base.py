"""The task interface: what a task needs from the data, what it adds to the model, how it is scored."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch
from torch import nn
from torchmetrics import Metric
from transformers import PreTrainedTokenizerFast

from cmvl.batch import Batch, TensorRecord
from cmvl.errors import ConfigError
from cmvl.models.families.base import ModelFamily
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.tasks.prediction import PredictOptions, Result


class SplitTargets(ABC):
    """Per-sample targets of one split, held as numpy columns; `collate` turns sample indices into the task's typed
    targets record (`Batch.targets`)."""

    annotated: bool  # False for a split without ground truth (e.g. VQA test-dev): predictions only

    @abstractmethod
    def collate(self, indices: list[int]) -> TensorRecord: ...


@dataclass
class SampleNote:
    """What a sample-predictions picture shows for one sample: its image (`image_row` into `batch.images`, or
    `image`), lines of text (input, prediction, truth) and boxes (xyxy in [0, 1] of the shown image) with their
    colours."""

    image_row: int
    lines: list[str]
    boxes: list[tuple[list[float], str]] = field(default_factory=list)
    verdict: str | None = None  # the prediction against the truth, marked by the frame: a key of VERDICT_COLOURS
    row: int | None = None  # the sample's row in the batch (its text): where a map of the image is computed from
    heat: torch.Tensor | None = None  # H×W relevance of the image's grid cells, drawn over it (samples.attention)
    image: torch.Tensor | None = None  # a picture of the task's own (uint8 3×H×W, e.g. a generated one) shown instead


VERDICT_COLOURS = {"right": "green", "partly right": "orange", "wrong": "red"}  # sample pictures' frames


PREDICTED, TRUE = "red", "lime"  # box colours in sample pictures
EMPTY = "(empty)"  # how a sample picture shows an empty text (a caption the model ended at once)


def can_predict(task: Task) -> bool:
    """Whether `cmvl predict` runs `task` (it implements `Task.predict_results`)."""
    return type(task).predict_results is not Task.predict_results


def family_problem(task: Task | type[Task], family: type[ModelFamily]) -> str | None:
    """Why the model family `family` (`model=`) cannot run `task` (a task, or a task class: then only whether the
    task runs on that family, since the parts a task needs may depend on its settings); None when it can."""
    if not issubclass(family, task.families):
        runs_on = " or ".join(f"model={f.name}" for f in task.families) or "no model family"
        return f"model={family.name} does not fit task={task.name}; it runs on {runs_on}"
    missing = sorted(task.parts - family.parts) if isinstance(task, Task) else []
    if missing:
        return f"model={family.name} builds no {', '.join(missing)} part, which task={task.name} needs"
    return None


class Task(ABC):
    """One training objective. The LitModule asks the task; it has no task-specific branches."""

    name: str
    table_kind: str  # which annotation table the task reads (`qa`, `captions`, ...)
    epochs: int  # the task's default training budget: trainer.max_epochs when that is null (cmvl/conf/trainer)
    metric_prefix: str | None = None  # metrics are logged as `<stage>/<prefix>/<metric>`; None = the task's name
    monitor_key: str  # metric (from `compute`) that picks the best checkpoint
    monitor_mode: str = "max"
    allows_random_crop: bool = True  # False where targets are positions in the image (boxes)
    group_rows_by_image: bool = True  # the batching when `data.group_by_image` is null (see cmvl/conf/train.yaml)
    sample_legend: str | None = None  # what the marks in this task's sample pictures mean (once per picture)
    # The model families the task runs on (`model=`; cmvl/conf/model/), and the parts of the family its forward
    # runs: only these are built (no parameters that never get a gradient, for DDP to wait for or to freeze).
    families: tuple[type[ModelFamily], ...] = (VisionLanguageModel,)
    parts: frozenset[str] = frozenset({"vision", "text", "fusion"})

    def members(self) -> list[Task]:
        """The single tasks this task trains (itself; a multitask lists its tasks). The data module builds data
        for each member; batches say which member they belong to (`batch.task`)."""
        return [self]

    def fit(self, train_table: pa.Table) -> None:
        """Learn what the task needs from the training split (e.g. an answer vocabulary); by default nothing."""
        del train_table

    def state_dict(self) -> dict[str, Any]:
        """Plain containers saved in the checkpoint, so evaluation rebuilds the task without the data (by default
        none: the task learnt nothing from the data)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def bind_tokenizer(self, tokenizer: PreTrainedTokenizerFast) -> None:
        """Called once the run's tokenizer exists (built or restored), before `build_head`: a task that writes
        text (captioning) takes its vocabulary and special tokens from it."""
        del tokenizer  # most tasks only read the tokenized batches

    def rows(self, table: pa.Table, *, train: bool) -> pa.Table:
        """The rows a split is trained or scored on (default: all; captioning evaluates one row per image)."""
        del train
        return table

    @abstractmethod
    def texts(self, table: pa.Table) -> list[str] | None:
        """The text input of every sample (a question, a caption, a phrase); None where the samples have no text of
        their own (an image-only task): its batches then carry no token ids, and nothing is tokenised for it."""

    def query_texts(self) -> list[str] | None:
        """Text shared by every sample (class names, detection phrases), tokenised once and sent once per batch
        (`batch.queries`); None (the default): the task has none."""
        return None

    def vocabulary_texts(self, table: pa.Table) -> list[str]:
        """The training text a tokenizer built for this run learns from (default: `texts` and `query_texts`; a
        task that writes text adds what it writes)."""
        return (self.texts(table) or []) + (self.query_texts() or [])

    @abstractmethod
    def targets(self, table: pa.Table) -> SplitTargets: ...

    @abstractmethod
    def build_head(self, dim: int) -> nn.Module: ...

    def build_heads(self, dim: int) -> dict[str, nn.Module]:
        """The model's heads, by the name the task's forward looks them up with (`model.heads[name]`); the family
        builds them after the parts the task needs."""
        return {self.name: self.build_head(dim)}

    @abstractmethod
    def forward(self, model: ModelFamily, batch: Batch) -> TensorRecord:
        """The training outputs of a batch, as the task's typed record (`AnswerLogits`, `BoxOutputs`, ...)."""

    def eval_forward(self, model: ModelFamily, batch: Batch) -> TensorRecord:
        """Outputs for validation and evaluation (default: `forward`; captioning decodes instead)."""
        return self.forward(model, batch)

    @abstractmethod
    def loss(self, outputs: TensorRecord, batch: Batch) -> torch.Tensor: ...

    @abstractmethod
    def make_metric(self) -> Metric: ...

    def metric_key(self, stage: str, name: str) -> str:
        """The logged name of metric `name` in `stage` (`val/vqa/acc`)."""
        prefix = self.name if self.metric_prefix is None else self.metric_prefix
        return "/".join(part for part in (stage, prefix, name) if part)

    def validation_keys(self) -> list[str]:
        """Every validation metric the task can log, known before any data is read: a sweep's `optimized_metric`
        is checked against them before its first job runs."""
        return [self.metric_key("val", name) for name in self.make_metric().names]

    def compute_metric(self, metric: Metric, model: ModelFamily) -> dict[str, torch.Tensor]:
        """The metric's values over everything it was updated with (default: `metric.compute()`; retrieval with
        re-ranking scores candidate pairs with the model)."""
        del model
        return metric.compute()

    def make_eval_metric(self) -> Metric:
        """The metric of `cmvl eval` (default: the validation metric; captioning adds METEOR)."""
        return self.make_metric()

    def member_metric(self, metric: Metric, name: str) -> Metric:
        """The part of `metric` that scores member `name` (for a single task: all of it)."""
        del name
        return metric

    @abstractmethod
    def update_metric(self, metric: Metric, outputs: TensorRecord, batch: Batch) -> None: ...

    @abstractmethod
    def predictions(self, outputs: TensorRecord, batch: Batch) -> list[dict[str, Any]]:
        """Predictions of one batch in the official results format of the task (a list of records)."""

    def sample_notes(self, outputs: TensorRecord, batch: Batch, count: int) -> list[SampleNote]:
        """The first `count` samples of a validation batch as pictures show them (default: the input text, where
        the samples have one, and the prediction record)."""
        records = self.predictions(outputs, batch)[:count]
        texts = batch.texts
        return [
            SampleNote(int(batch.image_index[i]), [*([texts[i]] if texts is not None else []), f"pred: {record}"])
            for i, record in enumerate(records)
        ]

    # -- prediction on a user's inputs (`cmvl predict`, `cmvl.predict.pipeline`; cmvl/tasks/prediction.py) ------
    # A batch built from requests has `PredictTargets` as `batch.targets` (no ground truth: the images' sizes only).
    predict_input: str | None = None  # the request field with a sample's text ("question", "phrase"); None: image only
    predict_queries: bool = False  # True: a request may give its own queries (detection's free-text classes)
    predict_reads_image: bool = True  # False: a request has no image (generation draws one from its prompt)

    def predict_forward(self, model: ModelFamily, batch: Batch, options: PredictOptions) -> TensorRecord:
        """Outputs for a batch of a user's inputs (default: `eval_forward`; a decoding task applies
        `options.beam_size`). Must not read ground truth from `batch.targets`."""
        del options
        return self.eval_forward(model, batch)

    def predict_results(self, outputs: TensorRecord, batch: Batch, options: PredictOptions) -> list[Result]:
        """One typed result per sample of a prediction batch (`AnswerResult`, `CaptionResult`, ...). A task that
        overrides this is one `cmvl predict` runs (`can_predict`)."""
        raise ConfigError(f"cmvl predict does not run task={self.name} yet (no predict_results)")

    def epoch_pictures(self, metric: Metric) -> dict[str, Any]:
        """Pictures of a whole validation epoch (name → PIL image; classification: its confusion matrix), drawn from
        the metric's state over every process, so every process calls this; written beside the sample pictures as
        `<name>_epoch<N>.png`. None by default."""
        del metric
        return {}

    def final_predictions(self, metric: Metric) -> Any | None:
        """Predictions that need the whole split (retrieval rankings), from the metric's gathered state; None
        means the per-batch `predictions` are the result."""
        return None
