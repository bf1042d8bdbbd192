"""The three export formats: each writes its model file into a folder and returns a runner that computes the graph's
outputs from the same inputs as NumPy arrays (what the parity check compares with PyTorch)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cmvl.errors import UserError
from cmvl.export.graph import ExportableModel, GraphSignature, dynamic_axes
from cmvl.training.checkpoint_schema import CHECKPOINT_KEY, STATE_PREFIX
from cmvl.training.checkpoints import SAFETENSORS_RUN_KEY

if TYPE_CHECKING:
    from cmvl.run import Run

Runner = Callable[[tuple[torch.Tensor, ...]], list[np.ndarray]]
FORMATS = ("onnx", "torch_export", "safetensors")
ONNX_EXPORTERS = ("dynamo", "torchscript")  # torch.onnx.export(dynamo=True) | the older TorchScript-based exporter
MODEL_FILES = {"onnx": "model.onnx", "torch_export": "model.pt2", "safetensors": "model.safetensors"}


def torch_dynamic_shapes(signature: GraphSignature, max_text_length: int) -> dict[str, dict[int, torch.export.Dim]]:
    """torch.export's dynamic dimensions: any batch, texts up to the run's `text.max_length` (BERT's positions)."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    text = torch.export.Dim("text_length", min=1, max=max_text_length)
    dims = {"batch": batch, "text_length": text}
    return {name: {axis: dims[label] for axis, label in axes.items()} for name, axes in dynamic_axes(signature).items()}


def export_program(graph: ExportableModel, example: tuple[torch.Tensor, ...], max_text_length: int):
    """The graph as a `torch.export.ExportedProgram` with a dynamic batch and text length."""
    shapes = torch_dynamic_shapes(graph.signature, max_text_length)
    kwargs = dict(zip(graph.signature.inputs, example))
    with torch.no_grad():
        return torch.export.export(graph, (), kwargs=kwargs, dynamic_shapes=shapes, strict=False)


def write_torch_export(
    graph: ExportableModel, example: tuple[torch.Tensor, ...], folder: Path, *, max_text_length: int
) -> Runner:
    program = export_program(graph, example, max_text_length)
    path = folder / MODEL_FILES["torch_export"]
    torch.export.save(program, path)
    module = torch.export.load(path).module()

    def run(inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in module(**dict(zip(graph.signature.inputs, inputs)))]

    return run


def write_onnx(
    graph: ExportableModel,
    example: tuple[torch.Tensor, ...],
    folder: Path,
    *,
    max_text_length: int,
    exporter: str,
    opset: int,
) -> Runner:
    import onnxruntime as ort

    path = folder / MODEL_FILES["onnx"]
    names = {"input_names": list(graph.signature.inputs), "output_names": list(graph.signature.outputs)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporters' tracer and deprecation notices, not the user's business
        if exporter == "dynamo":
            program = export_program(graph, example, max_text_length)
            shapes = torch_dynamic_shapes(graph.signature, max_text_length)
            save_dynamo_onnx(program, path, names, dynamic_shapes=shapes, opset=opset)
        else:
            torch.onnx.export(
                graph, example, str(path), dynamic_axes=dynamic_axes(graph.signature), opset_version=opset,
                dynamo=False, **names,
            )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        return session.run(None, {name: t.numpy() for name, t in zip(graph.signature.inputs, inputs)})

    return run


def save_dynamo_onnx(program, path: Path, names: dict[str, list[str]], *, dynamic_shapes: dict, opset: int) -> None:
    """A `torch.export` program as an ONNX file with `torch.onnx.export(dynamo=True)`. `dynamic_shapes` (the program's
    own, by input name) names the graph's symbolic dimensions as the manifest does ("batch", "text_length") instead of
    the tracer's symbols ("s34"); the exporter's progress lines are not printed."""
    onnx_program = torch.onnx.export(
        program, dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True, verbose=False, **names
    )
    onnx_program.save(str(path))


def write_safetensors(run: Run, checkpoint: dict, graph: ExportableModel, folder: Path) -> Runner:
    from cmvl.run import load_run

    path = folder / MODEL_FILES["safetensors"]
    save_safetensors(run, checkpoint, path)
    restored = ExportableModel(load_run(path).model, run.task).eval()
    restored.signature = graph.signature

    def run_restored(inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in restored(*inputs)]

    return run_restored


def save_safetensors(run: Run, checkpoint: dict, path: Path) -> None:
    """The weights as safetensors (no pickle) with the run's cmvl section (config, tokenizer, task state) as JSON in
    the file's metadata: one file that `cmvl.load_run` reads like a checkpoint."""
    from safetensors.torch import save_file

    weights, seen = {}, set()
    for key, value in run.model.state_dict().items():
        value = value.detach().contiguous().cpu()
        # A tied weight (the caption decoder's output layer is its input embedding) is stored under each name:
        # safetensors refuses tensors that share memory, and loading sets both names to the same values again.
        weights[STATE_PREFIX + key] = value.clone() if value.data_ptr() in seen else value
        seen.add(value.data_ptr())
    section = checkpoint[CHECKPOINT_KEY]
    record = {
        CHECKPOINT_KEY: section,
        "global_step": int(checkpoint["global_step"]),
        "epoch": int(checkpoint.get("epoch", 0)),
    }
    try:
        metadata = {SAFETENSORS_RUN_KEY: json.dumps(record)}
    except TypeError as err:
        raise UserError(f"export format=safetensors: the checkpoint's cmvl section is not JSON ({err})") from None
    save_file(weights, str(path), metadata=metadata)


def parity_summary(
    worst: dict[str, float], *, inputs: int, rows: int, tolerance: float, export_format: str
) -> dict[str, object]:
    """The parity record of `cmvl_export.json`; an output whose max |Δ| is above `tolerance` is one line."""
    bad = {k: v for k, v in worst.items() if not v <= tolerance}
    if bad:
        name, value = next(iter(bad.items()))
        raise UserError(
            f"export: the {export_format} model's {name} differs from PyTorch's by {value:.3g} > {tolerance:g} "
            "(max |Δ| over the validation batches); nothing was written"
        )
    return {"inputs": inputs, "rows": rows, "tolerance": tolerance, "max_abs_diff": worst}
