"""The exported graph of a run: a task's evaluation forward as a function of plain tensors, and the example inputs and
dynamic dimensions every exporter (ONNX, torch.export) traces it with.

The export boundary: images enter as uint8 B×3×S×S, already decoded and resized to the run's image size S (the
client's job, described in cmvl_export.json); scaling to [0, 1] and the per-channel mean/std normalisation happen
inside the graph (`VisionLanguageModel.encode_images`), as in PyTorch. Texts enter as token ids and an attention mask
B×L (int64), padded the way the run's tokenizer pads. Image i goes with text i. The outputs are the tensor fields of
the task's evaluation record (VQA: `logits` B×A; tagging: `logits` B×C; grounding: `box` B×4; retrieval:
`image_emb`, `text_emb`, `logit_scale`), in field order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from cmvl.batch import Batch
from cmvl.errors import UserError
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.tasks.base import Task

# The tasks whose evaluation forward is one graph (captioning is an encoder and a decoding step, cmvl/export/caption.py;
# written VQA answers decode in a loop: not yet).
EXPORTABLE_TASKS = ("vqa", "tagging", "grounding", "retrieval")


@dataclass(frozen=True)
class GraphSignature:
    """The names of a graph's inputs and outputs, in order."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class ExportableModel(nn.Module):
    """`forward(images[, input_ids, attention_mask])` → the task's evaluation outputs as a tuple of tensors."""

    def __init__(self, model: VisionLanguageModel, task: Task) -> None:
        super().__init__()
        problem = export_problem(model, task)
        if problem:
            raise UserError(problem)
        self.model, self.task = model, task
        self.takes_text = "text" in task.parts
        self.signature: GraphSignature | None = None  # known after the first call (`describe`)

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        rows = torch.arange(images.shape[0], device=images.device)
        batch = Batch(
            images=images,
            image_index=rows,
            image_key=rows,
            index=rows,
            task=self.task.name,
            targets=None,  # the evaluation forward of an exportable task reads no targets
            input_ids=input_ids,
            attention_mask=attention_mask,
        )
        record = self.task.eval_forward(self.model, batch)
        return tuple(getattr(record, name) for name in self._output_names(record))

    def _output_names(self, record: object) -> tuple[str, ...]:
        if self.signature is not None:
            return self.signature.outputs
        return tuple(f.name for f in dataclasses.fields(record) if isinstance(getattr(record, f.name), torch.Tensor))

    @torch.no_grad()
    def describe(self, example: tuple[torch.Tensor, ...]) -> GraphSignature:
        """Runs `example` once to learn the output names (the record's tensor fields) and fixes them."""
        rows = torch.arange(example[0].shape[0])
        batch = Batch(example[0], rows, rows, rows, self.task.name, None, *example[1:])
        record = self.task.eval_forward(self.model, batch)
        inputs = ("images", "input_ids", "attention_mask") if self.takes_text else ("images",)
        self.signature = GraphSignature(inputs, self._output_names(record))
        return self.signature


def export_problem(model: nn.Module, task: Task) -> str | None:
    """Why this run's model cannot be exported as one graph (None: it can)."""
    if not isinstance(model, VisionLanguageModel):
        return f"export: model family {type(model).__name__} is not exportable yet (vl_fusion is)"
    if task.name not in EXPORTABLE_TASKS:
        return f"export: task={task.name} is not exportable yet (exportable: {', '.join(EXPORTABLE_TASKS)})"
    if getattr(task, "answer_mode", "classify") != "classify":
        return "export: VQA with task.answer_mode=generate decodes in a loop; only classify is exportable yet"
    if getattr(task, "rerank_k", 0):
        return "export: retrieval with re-ranking (task.itm=true) scores pairs in a loop; export it with itm=false"
    return None


def example_inputs(batch: Batch, takes_text: bool) -> tuple[torch.Tensor, ...]:
    """A real batch as the graph's inputs: one image per text (image i with text i)."""
    images = batch.images[batch.image_index]
    if not takes_text:
        return (images,)
    return images, batch.input_ids, batch.attention_mask


def dynamic_axes(signature: GraphSignature) -> dict[str, dict[int, str]]:
    """The dynamic dimensions of every input and output, by name: the batch everywhere, the text length of texts."""
    axes = {"images": {0: "batch"}}
    if "input_ids" in signature.inputs:
        axes |= {"input_ids": {0: "batch", 1: "text_length"}, "attention_mask": {0: "batch", 1: "text_length"}}
    return axes
