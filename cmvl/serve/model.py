"""What the app asks of a served model, whichever backend runs it: a card known before the weights are loaded (the
task, the text it reads, whether it has explanation maps), then answers for a batch of requests in `cmvl predict`'s
record format (or `{"error": ...}` for a request it refuses) and, where it can, an explanation overlay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from cmvl.serve.requests import ServeRequest


@dataclass(frozen=True)
class ModelCard:
    backend: str  # torch | onnx
    task: str  # the task that answers (a multitask's chosen member)
    text_field: str | None  # the request field the task reads: question, phrase, or None (image only)
    explains: bool  # POST /explain draws overlays (the torch backend, for a task with maps)


class ServedModel(Protocol):
    card: ModelCard

    def info(self) -> dict[str, Any]:
        """`GET /info`: task, model, answer count, input size, the checkpoint's sha256."""

    def answer(self, requests: list[ServeRequest]) -> list[dict[str, Any]]:
        """One record per request, in order: predict's record, or `{"error": reason}` for one it refuses."""

    def explain(self, request: ServeRequest, method: str) -> dict[str, Any]:
        """The overlay of what the model looked at (a `UserError` for a request it cannot explain)."""


class OpenedModel(Protocol):
    """A model whose card is read and whose weights are not loaded yet (`load` runs in the background)."""

    card: ModelCard

    def load(self) -> ServedModel: ...


def target_name(node: Any) -> str | None:
    """The class a config node builds (`cmvl.models.fusion.attention.CrossAttentionFusion` → its last name)."""
    target = node.get("_target_") if hasattr(node, "get") else None
    return str(target).rsplit(".", 1)[-1] if target else None
