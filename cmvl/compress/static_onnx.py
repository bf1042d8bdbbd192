"""`int8_static`: ONNX Runtime's static quantiser on the run's exported ONNX model (torchao's static int8 needs
per-layer observers cmvl's CPU path does not have; ONNX Runtime's is its maintained route to an int8 ONNX model).
Activation ranges are calibrated on training batches; weights are int8 per output channel, activations int8, in the
QDQ format. The original in the report is the same float ONNX model in ONNX Runtime, so both run in one runtime."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cmvl.atomic_file import write_json_atomic
from cmvl.batch import Batch
from cmvl.compress.measure import Forward, measure, score
from cmvl.export import first_batches
from cmvl.export.formats import write_onnx
from cmvl.export.graph import ExportableModel, example_inputs
from cmvl.export.manifest import MANIFEST_NAME, TOKENIZER_NAME, build_manifest, tokenizer_json

if TYPE_CHECKING:
    from cmvl.compress.run_compression import CompressSettings
    from cmvl.run import Run

FLOAT_MODEL, INT8_MODEL = "model.float.onnx", "model.onnx"
QUANTISED_OPS = ["MatMul", "Gemm", "Conv"]  # the layers with weights; softmax, norms and GELU stay float


class _Calibration:
    """onnxruntime's CalibrationDataReader over a few training batches (graph inputs as NumPy arrays)."""

    def __init__(self, graph: ExportableModel, batches: list[Batch]) -> None:
        self.rows = [
            {n: t.numpy() for n, t in zip(graph.signature.inputs, example_inputs(b, graph.takes_text))} for b in batches
        ]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return self.rows.pop() if self.rows else None


def _session_forward(path: Path, graph: ExportableModel, record_type: type) -> Forward:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the threads the PyTorch measurements use
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(batch: Batch) -> Any:
        inputs = example_inputs(batch, graph.takes_text)
        outputs = session.run(None, {n: t.numpy() for n, t in zip(graph.signature.inputs, inputs)})
        return record_type(**{n: torch.from_numpy(o) for n, o in zip(graph.signature.outputs, outputs)})

    return forward


def _training_batches(run: Run, count: int) -> list[Batch]:
    from cmvl.training.build import build_datamodule

    loader = build_datamodule(run.config, task=run.task, tokenizer=run.tokenizer).train_dataloader()
    return first_batches(loader, count)


def quantise_static(
    run: Run, checkpoint: dict[str, Any], batches: list[Batch], staging: Path, settings: CompressSettings
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Writes the float and the int8 ONNX models into `staging` and measures both."""
    import onnxruntime
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    del checkpoint  # the ONNX models carry the weights; the manifest carries the rest
    graph = ExportableModel(run.model.cpu().eval(), run.task).eval()
    example = example_inputs(batches[0], graph.takes_text)
    graph.describe(example)
    max_length = int(run.config.text.max_length)
    write_onnx(graph, example, staging, max_text_length=max_length, exporter="torchscript", opset=18)
    (staging / "model.onnx").rename(staging / FLOAT_MODEL)
    quantize_static(
        str(staging / FLOAT_MODEL),
        str(staging / INT8_MODEL),
        _Calibration(graph, _training_batches(run, settings.calibration_batches)),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=QUANTISED_OPS,
    )
    record_type = type(run.task.eval_forward(run.model, batches[0]))
    results = []
    for name in (FLOAT_MODEL, INT8_MODEL):
        forward = _session_forward(staging / name, graph, record_type)
        sizes = settings.batch_sizes
        results.append(measure(forward, run.task, batches, staging / name, batch_sizes=sizes, repeats=settings.repeats))
    # The float ONNX model in ONNX Runtime scores what PyTorch scores (to rounding): the report shows both.
    results[0]["pytorch_metrics"] = score(lambda b: run.task.eval_forward(run.model, b), run.task, batches)
    files = {"model": INT8_MODEL, "float_model": FLOAT_MODEL}
    if graph.takes_text:
        (staging / TOKENIZER_NAME).write_text(tokenizer_json(run))
        files["tokenizer"] = TOKENIZER_NAME
    parity = {"note": "int8: not held to the float tolerance; its accuracy is in report.json"}
    manifest = build_manifest(run, graph.signature, export_format="onnx", files=files, parity=parity)
    write_json_atomic(staging / MANIFEST_NAME, manifest)
    results[1]["file"] = INT8_MODEL
    return results[0], results[1], f"onnxruntime {onnxruntime.__version__} quantize_static (QDQ, int8 per channel)"
