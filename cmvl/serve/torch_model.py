"""The torch backend: a checkpoint restored as `cmvl.load_run` restores it, answered by `cmvl predict`'s own
pipeline (`cmvl.predict.pipeline.predict_requests`): the same decoding, tokenisation, batching rules and records,
so the service answers what `cmvl predict` answers. Explanations are `cmvl explain`'s maps drawn as its overlay."""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cmvl.errors import UserError
from cmvl.serve.model import ModelCard, target_name
from cmvl.serve.requests import ServeRequest


@dataclass
class TorchCheckpoint:
    """A checkpoint read and checked (config, task, tokenizer) whose model is not built yet."""

    path: Path
    checkpoint: dict[str, Any]
    config: Any
    device: Any
    settings: Any  # PredictSettings
    card: ModelCard

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        device: str = "cpu",
        task: str | None = None,
        top_k: int | None = None,
        precision: str = "32",
        overrides: list[str] | tuple[str, ...] = (),
    ) -> TorchCheckpoint:
        """One `UserError` line for a missing or unreadable checkpoint, a bad override, or a task predict cannot
        answer, before the service starts."""
        from cmvl.explain.targets import check_explainable
        from cmvl.predict.pipeline import PredictSettings, predicting_task
        from cmvl.run import resolve_device, run_config
        from cmvl.tasks.prediction import PredictOptions
        from cmvl.training.checkpoints import load_checkpoint
        from cmvl.training.restore import restore_task

        where = resolve_device(device)
        checkpoint = load_checkpoint(path)
        cfg = run_config(checkpoint, list(overrides), device=where)
        restored, _ = restore_task(cfg, checkpoint, path)
        answering = predicting_task(SimpleNamespace(task=restored), task)
        try:
            check_explainable(answering)
            explains = True
        except UserError:
            explains = False
        settings = PredictSettings(
            task=task, options=PredictOptions(top_k=top_k), precision=precision, on_error="skip", num_workers=0
        )
        card = ModelCard("torch", answering.name, answering.predict_input, explains)
        return cls(Path(path), checkpoint, cfg, where, settings, card)

    def load(self) -> TorchModel:
        from cmvl.run import restore_run

        run = restore_run(self.path, self.checkpoint, self.config, device=self.device)
        self.checkpoint = {}  # the weights live in the model now
        return TorchModel(run, self.settings, self.card)


class TorchModel:
    def __init__(self, run: Any, settings: Any, card: ModelCard) -> None:
        from cmvl.predict.pipeline import predicting_task

        self.run, self.settings, self.card = run, settings, card
        self.task = predicting_task(run, settings.task)
        self.model_lock = threading.Lock()  # a batch and an explanation (which hooks the model) never overlap

    def info(self) -> dict[str, Any]:
        cfg, run = self.run.config, self.run
        labels = getattr(self.task, "answers", None) or getattr(self.task, "categories", None)
        size = int(cfg.data.image.size)
        return {
            "backend": "torch",
            "task": self.card.task,
            "model": {
                "family": target_name(cfg.model),
                "vision": target_name(cfg.vision.encoder),
                "text": target_name(cfg.text.encoder),
                "fusion": target_name(cfg.fusion),
                "dim": int(cfg.model.dim),
            },
            "answers": len(labels) if labels is not None else None,
            "input": {"image_size": [size, size], "text_field": self.card.text_field,
                      "text_max_length": int(cfg.text.max_length)},
            "checkpoint": {"path": str(run.checkpoint.path), "sha256": run.checkpoint.sha256,
                           "global_step": run.checkpoint.global_step},
            "explains": self.card.explains,
        }  # fmt: skip

    def answer(self, requests: list[ServeRequest]) -> list[dict[str, Any]]:
        from cmvl.predict.pipeline import Failure, predict_requests
        from cmvl.predict.requests import Request

        asked = [Request(r.image, dict(r.texts), fields=r.fields) for r in requests]
        with self.model_lock:
            results = predict_requests(self.run, asked, replace(self.settings, batch_size=max(1, len(asked))))
        return [
            result.to_json() if isinstance(result, Failure) else {**r.fields, **result.to_json()}
            for r, result in zip(requests, results)
        ]

    def explain(self, request: ServeRequest, method: str) -> dict[str, Any]:
        from cmvl.explain.overlay import overlay_picture
        from cmvl.inference.explain import explain

        text = request.texts.get(self.card.text_field or "", "")
        with self.model_lock:
            explanation = explain(self.run, image=request.image, text=text, method=method, task=self.settings.task)
        picture = overlay_picture(
            explanation.image,
            explanation.question_map,
            f"{explanation.method} · {explanation.title}\nwhole text: {explanation.text}",
            explanation.box,
        )
        png = io.BytesIO()
        picture.save(png, format="PNG")
        return {
            "task": self.card.task,
            "method": explanation.method,
            "text": explanation.text,
            "title": explanation.title,
            "words": explanation.words,
            "box": explanation.box,
            "overlay_png": base64.b64encode(png.getvalue()).decode("ascii"),
        }
