"""Maps of a batch: for every text token and for the whole text, how relevant each image grid cell was to the
explained output (`targets.explained_output`), by one of the methods of `maps`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cmvl.errors import ConfigError
from cmvl.explain.maps import RecordedAttention, check_method, text_image_relevance
from cmvl.explain.targets import ExplainedOutput, explained_output
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.tokens import Tokens
from cmvl.tasks.base import Task


@dataclass
class BatchRelevance:
    """`token_maps` B×L×H×W (zero on padding and special tokens), `question_maps` B×H×W: the mean over the text's
    words (its tokens that are neither padding nor special), as LAVIS averages its per-token Grad-CAMs."""

    token_maps: torch.Tensor
    word_mask: torch.Tensor  # B×L bool
    question_maps: torch.Tensor
    output: ExplainedOutput


def word_token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    """B×L: the tokens that stand for words of the text (not padding, [CLS], [SEP], …)."""
    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    return attention_mask.bool() & ~torch.isin(input_ids, special)


def encode_for_maps(
    model: VisionLanguageModel,
    images: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_index: torch.Tensor | None = None,
) -> tuple[Tokens, Tokens]:
    """The vision tokens (one row per text) and text tokens the fusion reads, without gradients: the maps need the
    gradient of the output with respect to the fusion's attention only."""
    with torch.no_grad():
        vision, text = model.encode(images, input_ids, attention_mask, image_index)
    if vision.grid is None:
        raise ConfigError("the vision encoder's tokens have no spatial grid, so there is no image map to draw")
    return vision, text


def batch_relevance(
    task: Task, model: VisionLanguageModel, vision: Tokens, text: Tokens, word_mask: torch.Tensor, method: str
) -> BatchRelevance:
    """The maps of `method` for B samples (`vision` and `text` from `encode_for_maps`, `vision` possibly edited, e.g.
    grid cells masked). Runs where gradients are off too (a validation loop, inference mode): the forward it
    explains is recomputed with gradients on fresh copies of the tokens."""
    fusion = model.part("fusion")
    height, width = vision.grid
    recording = fusion.record_attention
    fusion.record_attention = True
    try:
        with torch.inference_mode(False), torch.enable_grad():
            vision = Tokens(vision.feats.clone(), vision.mask.clone(), vision.grid)
            text = Tokens(text.feats.clone(), text.mask.clone(), text.grid)
            output = explained_output(task, model, vision, text)
            recorded = RecordedAttention.of(fusion.attention_maps())
            check_method(method, recorded, type(fusion).__name__)
            relevance = text_image_relevance(
                recorded, method, output.score, text_length=text.feats.shape[1], cells=height * width
            )
    finally:
        fusion.record_attention = recording
    output.score = output.score.detach()
    words = word_mask.to(relevance.device)
    token_maps = (relevance * words.unsqueeze(-1)).unflatten(-1, (height, width))
    count = words.sum(dim=1).clamp_min(1).to(token_maps.dtype)
    question_maps = token_maps.sum(dim=1) / count[:, None, None]
    return BatchRelevance(token_maps, words, question_maps, output)
