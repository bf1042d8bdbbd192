"""`Batch`: what the collator hands a task (images, texts, the task's typed targets), and `TensorRecord`, the base
of every typed record of tensors that travels with it (targets, task outputs).

A record moves to a device (`.to`) and into pinned memory (`.pin_memory`, which a DataLoader with
`pin_memory=True` calls) field by field: tensors and nested dataclasses of tensors (records, `Tokens`) move,
everything else (strings, lists of references, the task's name) stays where it is, untouched and uncopied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

R = TypeVar("R", bound="TensorRecord")


def _map_tensors(record: Any, move: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """A copy of the dataclass `record` whose tensor fields, and those of its nested dataclasses, are `move`d."""
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if isinstance(value, torch.Tensor):
            changes[field.name] = move(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[field.name] = _map_tensors(value, move)
    return dataclasses.replace(record, **changes)


class TensorRecord:
    """Mixin of the dataclasses that carry tensors between the data and the model; `to` and `pin_memory` return a
    new record whose tensor fields (and nested dataclasses' tensor fields) are moved."""

    def to(self: R, device: torch.device | str, *, non_blocking: bool = False) -> R:
        """The record with its tensors on `device` (asynchronously from pinned memory with `non_blocking`)."""
        return _map_tensors(self, lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self: R) -> R:
        """The record with its tensors in page-locked memory (the DataLoader's pin-memory thread calls this)."""
        return _map_tensors(self, torch.Tensor.pin_memory)


@dataclass
class TextQueries(TensorRecord):
    """Text shared by every sample of a batch (class names, detection phrases), tokenised once per split and sent
    once per batch: `input_ids` / `attention_mask` Q×L for the Q texts, not B×Q×L."""

    texts: list[str]
    input_ids: torch.Tensor  # Q×L int64
    attention_mask: torch.Tensor  # Q×L int64, 1 = a real token

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Batch(TensorRecord):
    """B samples of one task, U ≤ B distinct images among them.

    A task whose samples have no text of their own (tagging; captioning's evaluation rows, whose caption is to be
    written) gets `input_ids`, `attention_mask` and `texts` as None: nothing was tokenised for it.
    """

    images: torch.Tensor  # U×3×H×W uint8: each distinct image once
    image_index: torch.Tensor  # B int64: the image (row of `images`) of each sample
    image_key: torch.Tensor  # U int64: each image's number in the split (same image, same key, in any batch)
    index: torch.Tensor  # B int64: each sample's row in the split
    task: str  # which task's data this is (a multitask dispatches on it)
    targets: TensorRecord  # the task's typed targets (`SplitTargets.collate`): `VQATargetsBatch`, …
    input_ids: torch.Tensor | None = None  # B×L int64, padded the way the tokenizer pads
    attention_mask: torch.Tensor | None = None  # B×L int64, 1 = a real token
    texts: list[str] | None = None  # the B input texts (sample pictures show them)
    queries: TextQueries | None = None  # text shared by the whole batch, where the task has some

    def __len__(self) -> int:
        return len(self.image_index)
