"""The ONNX backend: a `cmvl export format=onnx` folder served with onnxruntime, tokenizers, Pillow and NumPy only
(no torch is imported). It follows the folder's `cmvl_export.json` as any client does: images decoded as training
decodes them (`cmvl.data.decoding`), resized to the same pixels as training's torchvision resize
(cmvl/serve/resize.py, in NumPy), texts tokenised, truncated and padded as the manifest says; answers in
`cmvl predict`'s record format. It serves VQA exports (a classifier's answers); no explanation maps (they need the
model's gradients: torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cmvl.errors import ConfigError, UserError
from cmvl.serve.model import ModelCard
from cmvl.serve.requests import ServeRequest
from cmvl.serve.resize import resize_like_training

MANIFEST_NAME = "cmvl_export.json"  # as cmvl/export/manifest.py writes it (that module imports torch)
SERVED_TASKS = ("vqa",)


class OnnxExport:
    """An export folder whose manifest is read and checked; `load` opens the ONNX Runtime session."""

    def __init__(self, folder: Path, manifest: dict[str, Any], top_k: int) -> None:
        self.folder, self.manifest, self.top_k = folder, manifest, top_k
        self.card = ModelCard("onnx", manifest["task"], "question", explains=False)

    @classmethod
    def open(cls, folder: Path, *, top_k: int | None = None) -> OnnxExport:
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise ConfigError(f"export={folder}: {'not a folder' if folder.exists() else 'no such folder'}")
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"export={folder}: no {MANIFEST_NAME} (write one with cmvl export format=onnx)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"export={folder}: {MANIFEST_NAME} cannot be read ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != "onnx":
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise ConfigError(f"export={folder}: not an ONNX export (format={found}); write one with format=onnx")
        if manifest.get("task") not in SERVED_TASKS:
            raise ConfigError(
                f"export={folder}: backend=onnx serves task={'|'.join(SERVED_TASKS)} exports, this one is "
                f"task={manifest.get('task')}; serve its checkpoint with backend=torch"
            )
        for name in ("model", "tokenizer"):
            if not (folder / manifest["files"][name]).is_file():
                raise ConfigError(f"export={folder}: {manifest['files'][name]} is missing")
        return cls(folder, manifest, 5 if top_k is None else top_k)

    def load(self) -> OnnxModel:
        return OnnxModel(self)


class OnnxModel:
    def __init__(self, export: OnnxExport) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self.export, self.card, manifest = export, export.card, export.manifest
        self.manifest = manifest
        text = manifest["text"]
        self.tokenizer = Tokenizer.from_file(str(export.folder / manifest["files"]["tokenizer"]))
        self.tokenizer.enable_truncation(int(text["max_length"]))
        self.special = {i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special}
        self.session = onnxruntime.InferenceSession(
            str(export.folder / manifest["files"]["model"]), providers=["CPUExecutionProvider"]
        )
        self.labels = list(manifest["labels"])

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "backend": "onnx",
            "task": m["task"],
            "model": {"file": m["files"]["model"], "inputs": [i["name"] for i in m["inputs"]], "outputs": m["outputs"]},
            "answers": len(self.labels),
            "input": {"image_size": m["image"]["size"], "text_field": "question",
                      "text_max_length": m["text"]["max_length"]},
            "checkpoint": m["checkpoint"],
            "explains": False,
        }  # fmt: skip

    def answer(self, requests: list[ServeRequest]) -> list[dict[str, Any]]:
        records: list[dict[str, Any] | None] = [None] * len(requests)
        texts: dict[int, list[int]] = {}
        for k, request in enumerate(requests):
            try:
                texts[k] = self._token_ids(request)
            except UserError as err:
                records[k] = {"error": str(err)}
        if texts:
            rows = list(texts)
            images = np.stack([self.pixels(requests[k].image) for k in rows])
            ids, mask = self._padded([texts[k] for k in rows])
            (logits,) = self.session.run(["logits"], {"images": images, "input_ids": ids, "attention_mask": mask})
            for k, row in zip(rows, logits):
                records[k] = {**requests[k].fields, **self._answers(row)}
        return records  # every request has its record now

    def explain(self, request: ServeRequest, method: str) -> dict[str, Any]:
        raise UserError("backend=onnx has no explanation maps (they need the model's gradients); serve with torch")

    def _token_ids(self, request: ServeRequest) -> list[int]:
        """The question's token ids, refused as `cmvl predict` refuses it: another text field, none, an empty one,
        or one with no word the tokenizer knows."""
        extra = sorted(set(request.texts) - {"question"})
        if extra:
            raise UserError(f"task=vqa takes no {extra[0]}= (it takes question=)")
        question = request.texts.get("question")
        if question is None:
            raise UserError("task=vqa needs question=TEXT")
        if not question.strip():
            raise UserError("question is empty")
        ids = self.tokenizer.encode(question).ids
        if all(i in self.special for i in ids):
            raise UserError(f"question {question!r:.60}: none of its words is in the model's vocabulary")
        return ids

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The graph's uint8 3×H×W, resized as training resizes (cmvl/serve/resize.py: torchvision's pixels)."""
        height, width = self.manifest["image"]["size"]
        return resize_like_training(np.asarray(image, dtype=np.uint8), height, width)

    # tests/export/onnx_client.py pads and resizes from the same manifest on purpose without this code: it stands for
    # a user's client, which imports no cmvl (its test checks that), so the two are kept apart, not folded. It
    # resizes with Pillow (the manifest's near equivalent); this service reproduces training's pixels.
    def _padded(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        text = self.manifest["text"]
        length = max(len(r) for r in rows)
        ids = np.full((len(rows), length), int(text["pad_token_id"]), dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            span = slice(length - len(row), length) if text["padding_side"] == "left" else slice(0, len(row))
            ids[i, span], mask[i, span] = row, 1
        return ids, mask

    def _answers(self, logits: np.ndarray) -> dict[str, Any]:
        """predict's VQA record: the top_k answers by logit (ties: the lower index first), sigmoid probabilities."""
        order = np.argsort(-logits.astype(np.float32), kind="stable")[: self.export.top_k]
        probabilities = 1 / (1 + np.exp(-logits[order].astype(np.float64)))
        answers = [{"label": self.labels[j], "score": round(float(p), 6)} for j, p in zip(order, probabilities)]
        return {"task": "vqa", "answer": answers[0]["label"], "answers": answers}
