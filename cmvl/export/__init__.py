"""`cmvl export`: a trained run as an ONNX model, a torch.export program or safetensors weights, with the
`cmvl_export.json` a client needs, checked against PyTorch on validation batches before anything is kept.

    run = cmvl.load_run("best.ckpt")
    export_run(run, checkpoint, "onnx", Path("exported/"))
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cmvl.atomic_file import write_json_atomic
from cmvl.errors import UserError
from cmvl.export.formats import (
    FORMATS,
    MODEL_FILES,
    ONNX_EXPORTERS,
    parity_summary,
    write_onnx,
    write_safetensors,
    write_torch_export,
)
from cmvl.export.graph import ExportableModel, example_inputs
from cmvl.export.manifest import MANIFEST_NAME, TOKENIZER_NAME, build_manifest, tokenizer_json
from cmvl.export.staging import check_new_folder, staged_folder
from cmvl.models.compression import COMPRESSION_KEY, INT8_METHODS
from cmvl.models.lora import config_without_lora, merge_lora
from cmvl.training.checkpoint_schema import CHECKPOINT_KEY

if TYPE_CHECKING:
    from cmvl.batch import Batch
    from cmvl.run import Run

__all__ = ["FORMATS", "ONNX_EXPORTERS", "export_run", "first_batches", "parity_inputs", "validation_batches"]
DEFAULT_TOLERANCE = 1e-4
INT8_UNEXPORTABLE = ("onnx", "safetensors")


def export_run(
    run: Run,
    checkpoint: dict[str, Any],
    export_format: str,
    out: Path,
    *,
    parity_batches: int = 2,
    tolerance: float = DEFAULT_TOLERANCE,
    exporter: str = "dynamo",
    opset: int = 18,
) -> dict[str, Any]:
    """Writes the run (restored from `checkpoint`) in `export_format` into the folder `out` (new or empty) and
    returns the manifest. The exported model's outputs are compared with PyTorch's on `parity_batches` validation
    batches (and a one-row batch); a difference above `tolerance` is one line and nothing is kept."""
    if export_format not in FORMATS:
        raise UserError(f"export: format={export_format}: choose one of {', '.join(FORMATS)}")
    if exporter not in ONNX_EXPORTERS:
        raise UserError(f"export: exporter={exporter}: choose one of {', '.join(ONNX_EXPORTERS)}")
    check_new_folder(out, "export")
    _refuse_int8(checkpoint, export_format)
    if merge_lora(run.model):  # LoRA adapters folded into their base weights: the exported model is a plain one
        section = checkpoint[CHECKPOINT_KEY]
        checkpoint = {**checkpoint, CHECKPOINT_KEY: {**section, "config": config_without_lora(section["config"])}}
    if run.task.name == "caption":  # an encoder and one decoding step; the search loop stays outside
        from cmvl.export.caption import export_caption

        batches = validation_batches(run, parity_batches)
        return export_caption(
            run, checkpoint, export_format, out, batches, tolerance=tolerance, exporter=exporter, opset=opset
        )
    graph = ExportableModel(run.model.cpu().eval(), run.task).eval()
    batches = validation_batches(run, parity_batches)
    inputs = parity_inputs(batches, graph.takes_text)
    graph.describe(inputs[0])
    with staged_folder(out, "export") as staging:
        runner = _write_model(run, checkpoint, graph, inputs[0], staging, export_format, exporter, opset)
        parity = check_parity(graph, runner, inputs, tolerance, export_format)
        files = {"model": MODEL_FILES[export_format]}
        if graph.takes_text:
            (staging / TOKENIZER_NAME).write_text(tokenizer_json(run))
            files["tokenizer"] = TOKENIZER_NAME
        manifest = build_manifest(run, graph.signature, export_format=export_format, files=files, parity=parity)
        write_json_atomic(staging / MANIFEST_NAME, manifest)
    return manifest


def _refuse_int8(checkpoint: dict[str, Any], export_format: str) -> None:
    """torchao's int8 layers are tensor subclasses that neither ONNX exporter traces and safetensors cannot store."""
    compression = checkpoint[CHECKPOINT_KEY].get(COMPRESSION_KEY) or {}
    if export_format in INT8_UNEXPORTABLE and compression.get("method") in INT8_METHODS:
        raise UserError(
            f"export: format={export_format} of a {compression['method']} (torchao int8) checkpoint is not "
            "supported; export the float checkpoint, or write an int8 ONNX model with cmvl compress method=int8_static"
        )


def _write_model(
    run: Run,
    checkpoint: dict[str, Any],
    graph: ExportableModel,
    example: tuple[torch.Tensor, ...],
    folder: Path,
    export_format: str,
    exporter: str,
    opset: int,
):
    max_text_length = int(run.config.text.max_length)
    if export_format == "onnx":
        return write_onnx(graph, example, folder, max_text_length=max_text_length, exporter=exporter, opset=opset)
    if export_format == "torch_export":
        return write_torch_export(graph, example, folder, max_text_length=max_text_length)
    return write_safetensors(run, checkpoint, graph, folder)


def validation_batches(run: Run, count: int) -> list[Batch]:
    """The first `count` batches of the run's validation split, as `cmvl eval` reads them."""
    from cmvl.training.build import build_datamodule

    datamodule = build_datamodule(run.config, task=run.task, tokenizer=run.tokenizer)
    return first_batches(datamodule.eval_dataloaders("val")[run.task.name], count)


def first_batches(loader: Iterable[Batch], count: int) -> list[Batch]:
    return list(islice(loader, count))


def parity_inputs(batches: list[Batch], takes_text: bool) -> list[tuple[torch.Tensor, ...]]:
    """The graph inputs the parity check runs: each batch, and its first row alone with its text cut to its own
    tokens (another batch size and text length than the traced example)."""
    inputs = [example_inputs(b, takes_text) for b in batches]
    first = inputs[0]
    if not takes_text:
        return [*inputs, (first[0][:1],)]
    length = max(int(first[2][0].sum()), 1)
    one = (first[0][:1], first[1][:1, :length], first[2][:1, :length])
    return [*inputs, one]


def check_parity(
    graph: ExportableModel, runner, inputs: list[tuple[torch.Tensor, ...]], tolerance: float, export_format: str
) -> dict[str, Any]:
    """max |exported − PyTorch| per output over `inputs`; above `tolerance` is a `UserError`."""
    worst = dict.fromkeys(graph.signature.outputs, 0.0)
    rows = 0
    with torch.no_grad():
        for example in inputs:
            expected = [t.numpy() for t in graph(*example)]
            got = runner(example)
            rows += int(example[0].shape[0])
            for name, a, b in zip(graph.signature.outputs, expected, got):
                if a.shape != np.shape(b):
                    raise UserError(f"export: {export_format} output {name} has shape {np.shape(b)}, not {a.shape}")
                worst[name] = max(worst[name], float(np.abs(a.astype(np.float64) - b).max(initial=0.0)))
    return parity_summary(worst, inputs=len(inputs), rows=rows, tolerance=tolerance, export_format=export_format)
