"""`cmvl_export.json`: everything a client needs beside the exported model to feed it and read its outputs, without
torch or cmvl (the schema is documented in docs/export.md; `SCHEMA_VERSION` counts its incompatible changes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cmvl.export.graph import GraphSignature

if TYPE_CHECKING:
    from cmvl.run import Run

SCHEMA_VERSION = 1
MANIFEST_NAME = "cmvl_export.json"
TOKENIZER_NAME = "tokenizer.json"
# How each task's outputs become predictions (the rules of the task's `predictions`).
DECODING = {
    "vqa": "answer = labels[argmax(logits[i])]; probabilities = sigmoid(logits)",
    "tagging": "labels[j] for every j with sigmoid(logits[i, j]) >= threshold",
    "grounding": "box[i] = (cx, cy, w, h) as fractions of the image; x0 = (cx - w/2) * width, ...",
    "retrieval": "similarity = image_emb @ text_emb.T (both L2-normalised); rank by it",
    "caption": "memory = encoder(images); token = bos_id; for position 0 .. max_length-1: logits, caches = "
    "decoder_step(token, [position], memory, memory_mask, caches); token = argmax(logits) (pad_id once a row has "
    "written eos_id); caption = tokenizer.decode(tokens, skip_special_tokens=True).strip()",
}


def tokenizer_json(run: Run) -> str:
    """The run's tokenizer as a `tokenizers` JSON file, with no padding or truncation stored in it (the manifest
    says how to pad and truncate)."""
    backend = run.tokenizer.backend_tokenizer
    state = json.loads(backend.to_str())
    state["padding"], state["truncation"] = None, None
    return json.dumps(state)


def build_manifest(
    run: Run, signature: GraphSignature, *, export_format: str, files: dict[str, str], parity: dict[str, Any]
) -> dict[str, Any]:
    cfg, task = run.config, run.task
    size = int(cfg.data.image.size)
    tensors = {"images": ("uint8", ["batch", 3, size, size]), "input_ids": ("int64", ["batch", "text_length"])}
    tensors["attention_mask"] = ("int64", ["batch", "text_length"])
    takes_text = "input_ids" in signature.inputs
    return {
        "schema_version": SCHEMA_VERSION,
        "format": export_format,
        "files": files,
        "task": task.name,
        "inputs": [{"name": n, "dtype": tensors[n][0], "shape": tensors[n][1]} for n in signature.inputs],
        "outputs": list(signature.outputs),
        "image": {
            "size": [size, size],  # height, width
            "layout": "NCHW",
            "dtype": "uint8",
            "channels": "RGB",
            "decode": "8-bit RGB, EXIF orientation applied, transparency composited over white",
            "resize": {
                "to": [size, size],
                "keep_aspect": False,
                "interpolation": "bilinear",
                "antialias": True,
                "skip_if_same_size": True,
                "library": "torchvision.transforms.v2.Resize on the uint8 tensor; Pillow's Image.resize(size, "
                "Image.BILINEAR) agrees to one grey level (some pixels differ); cmvl/serve/resize.py is the "
                "same pixels in NumPy",
            },
            "normalise_inside_graph": True,
            "mean": [float(m) for m in cfg.data.image.mean],
            "std": [float(s) for s in cfg.data.image.std],
            "normalisation": "(pixel / 255 - mean) / std per channel, done by the graph",
        },
        "text": None
        if not takes_text
        else {
            "tokenizer": TOKENIZER_NAME,
            "max_length": int(cfg.text.max_length),
            "truncation": "longest_first, special tokens included in max_length",
            "padding_side": run.tokenizer.padding_side,
            "pad_token_id": int(run.tokenizer.pad_token_id if run.tokenizer.pad_token_id is not None else 0),
            "pad_to": "the longest text of the batch; attention_mask 1 on real tokens",
        },
        "labels": _labels(task),
        "decoding": DECODING[task.name],
        "threshold": getattr(task, "threshold", None),
        "parity": parity,
        "checkpoint": {"sha256": run.checkpoint.sha256, "global_step": run.checkpoint.global_step},
        "torch_version": torch.__version__,
    }


def _labels(task: Any) -> list[str] | None:
    """What output column j means: the answer vocabulary (VQA) or the categories (tagging); None otherwise."""
    for name in ("answers", "categories"):
        if hasattr(task, name):
            return list(getattr(task, name))
    return None


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST_NAME).read_text())
