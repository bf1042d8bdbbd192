"""Relevance of every image grid cell to every text token, from the text→image attention a fusion recorded.

Three methods (`METHODS`), all on the attention weights the fusion's output was computed from
(`Fusion.attention_maps()`, B×heads×Nq×Nk, on the autograd path):

- `attention`: the raw weights of the last layer, averaged over heads.
- `gradcam`: Grad-CAM on that attention (LAVIS's image-text-matching Grad-CAM; Chefer et al.'s relevancy, their
  rule 5): the attention times the gradient of the explained score with respect to it, the positive part, averaged
  over heads. A cell the text attends to but that lowers the score gets no relevance.
- `rollout` (single-stream fusions, where text and image tokens share one attention: `fusion=merged`): Abnar &
  Zuidema's attention rollout, the product over layers of (head-averaged attention + identity), rows normalised,
  so what a token took from another token at an earlier layer is followed back to the image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from cmvl.errors import ConfigError

METHODS = ("attention", "gradcam", "rollout")


@dataclass(frozen=True)
class Layout:
    """Where the text rows and the image columns of one recorded attention tensor are."""

    text_start: int  # index of the first text row (1 behind a single-stream fusion's [CLS] token)
    single_stream: bool  # queries and keys are the same joint sequence (rollout applies)


# Recorded attention (by the name after `layer<i>.`) whose queries are text tokens and whose keys end with the image's
# grid tokens: cross-attention fusions (attention, residual), the graph fusion's edges into words (text nodes first,
# then image nodes) and the single-stream joint attention over [CLS; text; image].
LAYOUTS = {
    "text_to_vision": Layout(0, single_stream=False),
    "to_text": Layout(0, single_stream=False),
    "joint": Layout(1, single_stream=True),
}
FUSIONS_WITH_MAPS = "fusion=attention, residual, graph or merged"
_LAYER_NAME = re.compile(r"layer(\d+)\.(.+)")


@dataclass(frozen=True)
class RecordedAttention:
    """A fusion's recorded text→image attention, one B×heads×Nq×Nk tensor per layer (first layer first)."""

    layers: list[torch.Tensor]
    layout: Layout

    @staticmethod
    def of(recorded: dict[str, torch.Tensor]) -> RecordedAttention | None:
        """The text→image attention among `recorded` (`Fusion.attention_maps()`); None when there is none."""
        found: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for name, weights in recorded.items():
            match = _LAYER_NAME.fullmatch(name)
            if match and match.group(2) in LAYOUTS:
                found.setdefault(match.group(2), []).append((int(match.group(1)), weights))
        if not found:
            return None
        kind = next(iter(found))
        return RecordedAttention([w for _, w in sorted(found[kind], key=lambda t: t[0])], LAYOUTS[kind])

    def methods(self) -> tuple[str, ...]:
        return METHODS if self.layout.single_stream else METHODS[:2]


def check_method(method: str, recorded: RecordedAttention | None, fusion_name: str) -> None:
    """`ConfigError` (one line) unless `method` is a method and the fusion recorded what it needs."""
    if method not in METHODS:
        raise ConfigError(f"method={method}: choose one of {', '.join(METHODS)}")
    if recorded is None:
        raise ConfigError(
            f"method={method}: fusion {fusion_name} records no text→image attention, so no method has maps of it "
            f"(cmvl explain runs on {FUSIONS_WITH_MAPS})"
        )
    if method not in recorded.methods():
        raise ConfigError(
            f"method={method} needs a single-stream fusion (fusion=merged); fusion {fusion_name} supports "
            f"method={'|'.join(recorded.methods())}"
        )


def text_image_relevance(
    recorded: RecordedAttention, method: str, score_B: torch.Tensor | None, *, text_length: int, cells: int
) -> torch.Tensor:
    """B×L×cells: the relevance of each of the `cells` grid cells (the keys' last ones) to each of the L text tokens.

    `score_B`: the explained output of every sample (its predicted answer's logit, …), which `gradcam` takes the
    gradient of; samples are independent (the model is in eval mode), so one backward pass serves the batch."""
    rows = slice(recorded.layout.text_start, recorded.layout.text_start + text_length)
    last = recorded.layers[-1]
    if method == "attention":
        relevance = last.mean(dim=1)
    elif method == "gradcam":
        if score_B is None or not score_B.requires_grad:
            raise RuntimeError("gradcam needs the explained score with gradients (a forward under torch.enable_grad)")
        (grad,) = torch.autograd.grad(score_B.sum(), last, retain_graph=True)
        relevance = (grad * last).clamp(min=0).mean(dim=1)
    else:
        relevance = _rollout(recorded.layers)
    return relevance[:, rows, -cells:].detach()


def _rollout(layers: list[torch.Tensor]) -> torch.Tensor:
    """B×N×N: Π_l normalise(mean_heads(A_l) + I), later layers on the left (a token's mix of every input token)."""
    joint = None
    for weights in layers:
        mixed = weights.mean(dim=1)
        mixed = mixed + torch.eye(mixed.shape[-1], dtype=mixed.dtype, device=mixed.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        joint = mixed if joint is None else mixed @ joint
    return joint
