"""The task interface: what a task needs from the data, what it adds to the model, how it is scored."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import pyarrow as pa
import torch
from torch import nn
from torchmetrics import Metric

from cmvl.models.vl_model import VisionLanguageModel


class SplitTargets(ABC):
    """Per-sample targets of one split, held as numpy columns; `collate` turns sample indices into tensors."""

    annotated: bool  # False for a split without ground truth (e.g. VQA test-dev): predictions only

    @abstractmethod
    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]: ...


class Task(ABC):
    """One training objective. The LitModule asks the task; it has no task-specific branches."""

    name: str
    table_kind: str  # which annotation table the task reads (`qa`, `captions`, ...)
    monitor_key: str  # metric (from `compute`) that picks the best checkpoint
    monitor_mode: str = "max"

    @abstractmethod
    def fit(self, train_table: pa.Table) -> None:
        """Learn what the task needs from the training split (e.g. an answer vocabulary)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Plain containers saved in the checkpoint, so evaluation rebuilds the task without the data."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def texts(self, table: pa.Table) -> list[str]:
        """The text input of every sample (a question, a caption, a phrase)."""

    @abstractmethod
    def targets(self, table: pa.Table) -> SplitTargets: ...

    @abstractmethod
    def build_head(self, dim: int) -> nn.Module: ...

    @abstractmethod
    def forward(self, model: VisionLanguageModel, batch: dict[str, Any]) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor: ...

    @abstractmethod
    def make_metric(self) -> Metric: ...

    @abstractmethod
    def update_metric(self, metric: Metric, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> None: ...

    @abstractmethod
    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Predictions in the official results format of the task."""
