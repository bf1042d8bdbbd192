"""`cmvl export` of a captioning run: the encoder and one decoding step (cmvl/export/caption_graph.py) in each
format, checked on validation images: the exported graphs' memory, logits and caches against PyTorch's (max |Δ|),
the cached step's logits against the decoder's full-prefix forward, and the greedy captions of the exported graphs
against the decoder's own greedy search (the same tokens)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cmvl.errors import UserError
from cmvl.export.caption_graph import (
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    STEP_INPUTS,
    STEP_OUTPUTS,
    CaptionEncoder,
    CaptionStep,
    Framing,
    caption_decoder,
    greedy_decode,
)
from cmvl.export.formats import parity_summary, save_dynamo_onnx, save_safetensors
from cmvl.export.graph import GraphSignature
from cmvl.models.tokens import Tokens

if TYPE_CHECKING:
    from cmvl.run import Run

Runner = Callable[..., list[np.ndarray]]
# Each format's files: the encoder's and the decoding step's.
CAPTION_FILES = {
    "onnx": {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx"},
    "torch_export": {"encoder": "encoder.pt2", "decoder_step": "decoder_step.pt2"},
    "safetensors": {"model": "model.safetensors"},
}
# The batch dimension of every input and output, by name (the cache's is its second).
BATCH_AXES = {"images": 0, "memory": 0, "memory_mask": 0, "token": 0, "logits": 0}
BATCH_AXES |= {name: 1 for name in ("cache_keys", "cache_values", "cache_keys_out", "cache_values_out")}


def torch_runner(module: torch.nn.Module) -> Runner:
    def run(*inputs: Any) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = module(*(torch.as_tensor(np.asarray(x)) for x in inputs))
        return [t.numpy() for t in outputs]

    return run


def write_caption_graphs(
    run: Run, checkpoint: dict, modules: tuple[CaptionEncoder, CaptionStep], example: tuple, folder: Path, fmt: str,
    *, exporter: str, opset: int,
) -> tuple[Runner, Runner]:  # fmt: skip
    """Writes the encoder and the step in `fmt` into `folder`; returns runners of what was written."""
    encoder, step = modules
    if fmt == "safetensors":
        from cmvl.run import load_run

        path = folder / CAPTION_FILES[fmt]["model"]
        save_safetensors(run, checkpoint, path)
        restored = load_run(path).model.eval()
        return torch_runner(CaptionEncoder(restored)), torch_runner(CaptionStep(caption_decoder(restored, run.task)))
    images = example[0]
    with torch.no_grad():
        memory, mask = encoder(images)
    step_example = (*step_inputs(step, images.shape[0], memory, mask),)
    runners = []
    for module, inputs, (names_in, names_out), name in (
        (encoder, (images,), (ENCODER_INPUTS, ENCODER_OUTPUTS), "encoder"),
        (step, step_example, (STEP_INPUTS, STEP_OUTPUTS), "decoder_step"),
    ):
        path = folder / CAPTION_FILES[fmt][name]
        if fmt == "onnx":
            runners.append(_write_onnx(module, inputs, path, names_in, names_out, exporter=exporter, opset=opset))
        else:
            runners.append(_write_program(module, inputs, path, names_in))
    return runners[0], runners[1]


def step_inputs(step: CaptionStep, rows: int, memory: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The first step's inputs: BOS at position 0 (a token id the tracer sees as data), empty caches."""
    keys, values = step.empty_cache(rows)
    token = torch.full((rows,), int(step.decoder.embed.num_embeddings) - 1, dtype=torch.long)
    return token, torch.zeros(1, dtype=torch.long), memory, mask, keys, values


def _dynamic_shapes(names: tuple[str, ...]) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    return {name: ({BATCH_AXES[name]: batch} if name in BATCH_AXES else None) for name in names}


def _program(module: torch.nn.Module, inputs: tuple, names: tuple[str, ...]):
    with torch.no_grad():
        return torch.export.export(
            module, (), kwargs=dict(zip(names, inputs)), dynamic_shapes=_dynamic_shapes(names), strict=False
        )


def _write_program(module: torch.nn.Module, inputs: tuple, path: Path, names: tuple[str, ...]) -> Runner:
    torch.export.save(_program(module, inputs, names), path)
    loaded = torch.export.load(path).module()

    def run(*arrays: Any) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = loaded(**{n: torch.as_tensor(np.asarray(a)) for n, a in zip(names, arrays)})
        return [t.numpy() for t in outputs]

    return run


def _write_onnx(
    module: torch.nn.Module, inputs: tuple, path: Path, names_in: tuple[str, ...], names_out: tuple[str, ...],
    *, exporter: str, opset: int,
) -> Runner:  # fmt: skip
    import onnxruntime as ort

    names = {"input_names": list(names_in), "output_names": list(names_out)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporters' tracer and deprecation notices, not the user's business
        if exporter == "dynamo":
            program = _program(module, inputs, names_in)
            save_dynamo_onnx(program, path, names, dynamic_shapes=_dynamic_shapes(names_in), opset=opset)
        else:
            axes = {n: {BATCH_AXES[n]: "batch"} for n in (*names_in, *names_out) if n in BATCH_AXES}
            torch.onnx.export(
                module, inputs, str(path), dynamic_axes=axes, opset_version=opset, dynamo=False, **names
            )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fed = [i.name for i in session.get_inputs()]  # the exporter drops inputs the graph does not read

    def run(*arrays: Any) -> list[np.ndarray]:
        given = dict(zip(names_in, arrays))
        return session.run(None, {n: np.asarray(given[n]) for n in fed})

    return run


def caption_parity(
    modules: tuple[CaptionEncoder, CaptionStep],
    exported: tuple[Runner, Runner],
    image_batches: list[torch.Tensor],
    framing: Framing,
    tolerance: float,
    fmt: str,
) -> dict[str, Any]:
    """max |Δ| of the exported memory, logits and caches to PyTorch's, and of the cached step's logits to the
    decoder's full-prefix forward; the exported greedy captions must be the decoder's own greedy ones."""
    encoder, step = modules
    reference = (torch_runner(encoder), torch_runner(step))
    worst = {"memory": 0.0, "logits": 0.0, "cache": 0.0, "step_vs_decoder": 0.0}
    rows = 0
    for images in image_batches:
        written, steps = greedy_decode(reference[1], reference[0], images.numpy(), framing, step.cache_shape)
        expected = _decoder_greedy(encoder, step, images, framing)
        if written != expected:
            raise UserError("export: the cached decoding step does not write the decoder's captions (a cmvl bug)")
        worst["step_vs_decoder"] = max(worst["step_vs_decoder"], _full_prefix_gap(encoder, step, images, steps))
        memory = exported[0](images.numpy())
        worst["memory"] = max(worst["memory"], _gap(steps[0][0][2], memory[0]))
        for inputs, logits in steps:
            got = exported[1](*inputs)
            worst["logits"] = max(worst["logits"], _gap(logits, got[0]))
            keys, values = reference[1](*inputs)[1:]
            worst["cache"] = max(worst["cache"], _gap(keys, got[1]), _gap(values, got[2]))
        captions, _ = greedy_decode(exported[1], exported[0], images.numpy(), framing, step.cache_shape)
        if captions != written:
            raise UserError(f"export: the {fmt} graphs write other greedy captions than PyTorch; nothing was written")
        rows += int(images.shape[0])
    return parity_summary(worst, inputs=len(image_batches), rows=rows, tolerance=tolerance, export_format=fmt)


def _gap(a: Any, b: Any) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise UserError(f"export: an exported output has shape {b.shape}, not {a.shape}")
    return float(np.abs(a.astype(np.float64) - b).max(initial=0.0))


@torch.no_grad()
def _decoder_greedy(encoder: CaptionEncoder, step: CaptionStep, images: torch.Tensor, framing: Framing) -> list:
    memory, mask = encoder(images)
    tokens = step.decoder.generate(
        Tokens(memory, mask),
        bos_id=framing.bos_id,
        eos_id=framing.eos_id,
        pad_id=framing.pad_id,
        max_length=framing.max_length,
        beam_size=1,
    )
    return tokens.tolist()


@torch.no_grad()
def _full_prefix_gap(encoder: CaptionEncoder, step: CaptionStep, images: torch.Tensor, steps: list) -> float:
    """max |Δ| between each cached step's logits and the decoder's forward over the whole prefix."""
    memory, mask = encoder(images)
    prefix = torch.stack([torch.as_tensor(inputs[0]) for inputs, _ in steps], dim=1)  # B×T: BOS, then the tokens
    logits = step.decoder(prefix, Tokens(memory, mask))
    return max(_gap(logits[:, t].numpy(), cached) for t, (_, cached) in enumerate(steps))


def caption_manifest_fields(step: CaptionStep, framing: Framing, fmt: str) -> dict[str, Any]:
    """What a client needs beyond the common manifest to run the loop: the graphs' names, the cache and the ids."""
    layers, _, heads, positions, head_dim = step.cache_shape(1)
    return {
        "graphs": {
            "encoder": {"inputs": list(ENCODER_INPUTS), "outputs": list(ENCODER_OUTPUTS)},
            "decoder_step": {"inputs": list(STEP_INPUTS), "outputs": list(STEP_OUTPUTS)},
        }
        if fmt != "safetensors"
        else None,
        "cache": {"shape": [layers, "batch", heads, positions, head_dim], "dtype": "float32", "initial": "zeros"},
        "generation": {
            "bos_id": framing.bos_id,
            "eos_id": framing.eos_id,
            "pad_id": framing.pad_id,
            "max_length": framing.max_length,
            "search": "greedy in the client (the exported step is one step; beam search is the client's too)",
        },
    }


def caption_signature() -> GraphSignature:
    return GraphSignature(ENCODER_INPUTS, ENCODER_OUTPUTS)


def export_caption(
    run: Run, checkpoint: dict, fmt: str, out: Path, batches: list, *, tolerance: float, exporter: str, opset: int
) -> dict[str, Any]:
    """`export_run` for a captioning run: the encoder and one decoding step, checked, then the manifest."""
    from cmvl.atomic_file import write_json_atomic
    from cmvl.export.manifest import MANIFEST_NAME, TOKENIZER_NAME, build_manifest, tokenizer_json
    from cmvl.export.staging import staged_folder

    model = run.model.cpu().eval()
    modules = (CaptionEncoder(model).eval(), CaptionStep(caption_decoder(model, run.task)).eval())
    framing = Framing.of(run.task, modules[1].decoder)
    images = [b.images[b.image_index] for b in batches]
    images.append(images[0][:1])  # one row: another batch size than the traced example
    with staged_folder(out, "export") as staging:
        exported = write_caption_graphs(
            run, checkpoint, modules, (images[0],), staging, fmt, exporter=exporter, opset=opset
        )
        parity = caption_parity(modules, exported, images, framing, tolerance, fmt)
        (staging / TOKENIZER_NAME).write_text(tokenizer_json(run))
        files = {**CAPTION_FILES[fmt], "tokenizer": TOKENIZER_NAME}
        manifest = build_manifest(run, caption_signature(), export_format=fmt, files=files, parity=parity)
        manifest |= caption_manifest_fields(modules[1], framing, fmt)
        manifest["text"] = {"tokenizer": TOKENIZER_NAME, "decode": "skip_special_tokens=True, then strip spaces"}
        write_json_atomic(staging / MANIFEST_NAME, manifest)
    return manifest
