"""The exported graphs of a captioning run (`task=caption`, `task.decoder=transformer`): the search loop stays outside.

- `encoder`: images uint8 B×3×S×S → `memory` B×N×D (the projected vision tokens the decoder reads) and
  `memory_mask` B×N (bool, True on real tokens).
- `decoder_step`: one decoding step with its self-attention key/value cache as inputs and outputs: `token` B (int64,
  the newest token; BOS first), `position` (int64 [1], its position: 0 for BOS), `memory`, `memory_mask`,
  `cache_keys` / `cache_values` L×B×H×P×d (float32, zeros before the first step; P = the decoder's positions) →
  `logits` B×V (the next token's), and the caches with this step's keys and values written at `position`.

A step attends to the cache's positions up to `position` and the memory, as the decoder's full-prefix forward with
its causal mask does, so a loop of steps computes the decoder's logits (checked by `cmvl export`). Greedy decoding:
token = BOS; for position 0 … max_length−1: next = argmax(logits) (PAD for a row that has ended), a row ends at EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cmvl.errors import UserError
from cmvl.models.caption_decoder import CaptionDecoder
from cmvl.models.families.vl_fusion import VisionLanguageModel
from cmvl.models.tokens import Tokens

ENCODER_INPUTS = ("images",)
ENCODER_OUTPUTS = ("memory", "memory_mask")
STEP_INPUTS = ("token", "position", "memory", "memory_mask", "cache_keys", "cache_values")
STEP_OUTPUTS = ("logits", "cache_keys_out", "cache_values_out")


def caption_decoder(model: nn.Module, task) -> CaptionDecoder:
    """The run's transformer caption decoder, or why it cannot be exported as steps (one line)."""
    if not isinstance(model, VisionLanguageModel):
        raise UserError(f"export: model family {type(model).__name__} is not exportable yet (vl_fusion is)")
    decoder = model.heads[task.name]
    if not isinstance(decoder, CaptionDecoder):
        raise UserError(
            f"export: task.decoder={task.decoder} is not exportable yet; the transformer decoder "
            "(task.decoder=transformer) is exported as an encoder and one decoding step"
        )
    return decoder


class CaptionEncoder(nn.Module):
    def __init__(self, model: VisionLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.encode_images(images)
        return tokens.feats, tokens.mask


class CaptionStep(nn.Module):
    """One step of a `CaptionDecoder` with a fixed-size self-attention cache (see the module's docstring)."""

    def __init__(self, decoder: CaptionDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def cache_shape(self, batch: int) -> tuple[int, int, int, int, int]:
        attention = self.decoder.layers[0].self_attn
        return (len(self.decoder.layers), batch, attention.heads, self.decoder.max_positions, attention.head_dim)

    def empty_cache(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(self.cache_shape(batch)), torch.zeros(self.cache_shape(batch))

    def forward(
        self,
        token: torch.Tensor,
        position: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        cache_keys: torch.Tensor,
        cache_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        decoder = self.decoder
        slots = torch.arange(decoder.max_positions, device=token.device)
        written = (slots == position)[None, None, :, None]  # this step's slot of the cache
        later = slots > position  # the positions after this one: not attended
        hidden = torch.zeros(later.shape, dtype=memory.dtype).masked_fill(later, float("-inf"))[None, None, None, :]
        x = decoder.embed(token)[:, None] + decoder.position(position)[None]
        context = Tokens(memory, memory_mask)
        keys, values = [], []
        for layer, past_keys, past_values in zip(decoder.layers, cache_keys, cache_values, strict=True):
            attention = layer.self_attn
            h = layer.norm_self(x)
            q, k, v = (attention._split_heads(proj(h)) for proj in attention.projections())
            k, v = torch.where(written, k, past_keys), torch.where(written, v, past_values)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=hidden)
            x = x + attention.out_proj(attended.transpose(1, 2).flatten(2))
            h = layer.norm_cross(x)
            x = x + layer.cross_attn(h, context.feats, context.feats, key_padding_mask=~context.mask)[0]
            x = x + layer.ff(layer.norm_ff(x))
            keys.append(k)
            values.append(v)
        return decoder.out(decoder.norm(x))[:, 0], torch.stack(keys), torch.stack(values)


@dataclass(frozen=True)
class Framing:
    """The token ids and length limit the greedy loop needs (the task's `TextFraming` and `max_length`)."""

    bos_id: int
    eos_id: int
    pad_id: int
    max_length: int  # tokens written after BOS at most

    @classmethod
    def of(cls, task, decoder: CaptionDecoder) -> Framing:
        framing = task.framing
        return cls(framing.bos_id, framing.eos_id, framing.pad_id, min(task.max_length, decoder.max_positions - 1))


def greedy_decode(step, encode, images, framing: Framing, cache_shape) -> tuple[list[list[int]], list]:
    """The greedy loop over `encode(images)` → (memory, mask) and `step(token, position, memory, mask, keys,
    values)` → (logits, keys, values), for PyTorch modules and ONNX sessions alike (NumPy or torch arrays): the
    tokens written per row (EOS included, PAD after), and each step's inputs and logits (for the parity check)."""
    import numpy as np

    memory, mask = encode(images)
    rows = int(memory.shape[0])
    keys = np.zeros(cache_shape(rows), dtype=np.float32)
    values = np.zeros_like(keys)
    token = np.full(rows, framing.bos_id, dtype=np.int64)
    finished = np.zeros(rows, dtype=bool)
    written: list[list[int]] = [[] for _ in range(rows)]
    steps = []
    for position in range(framing.max_length):
        inputs = (token, np.array([position], dtype=np.int64), memory, mask, keys, values)
        logits, keys, values = (np.asarray(t) for t in step(*inputs))
        steps.append((inputs, logits))
        token = np.where(finished, framing.pad_id, logits.argmax(axis=1)).astype(np.int64)
        for row, value in enumerate(token.tolist()):
            written[row].append(value)
        finished |= token == framing.eos_id
        if finished.all():
            break
    return written, steps
