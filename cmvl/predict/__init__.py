"""Prediction on a user's own images and texts with a restored run (`cmvl predict`, `Run.predict`): the requests
(`requests`), their images decoded as evaluation decodes them (`images`) and the pipeline that batches them through
the task's prediction hooks (`pipeline`).

This package sits below `cmvl.run` (tests/test_import_graph.py: `cmvl.run` imports it, so that `Run.predict` is a
plain method), so it never imports `cmvl.run` nor `cmvl.inference`: it reads a run through `RestoredRun`, the
attributes of `cmvl.run.Run` it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig
    from transformers import PreTrainedTokenizerFast

    from cmvl.models.families.base import ModelFamily
    from cmvl.tasks.base import Task


class RestoredRun(Protocol):
    """What prediction reads of a restored run (`cmvl.run.Run` has these)."""

    config: DictConfig
    tokenizer: PreTrainedTokenizerFast
    task: Task
    model: ModelFamily
    device: torch.device
