"""Show and Tell (Vinyals et al., 2015) and Show, Attend and Tell (Xu et al., 2015): LSTM caption decoders over
the image's tokens, decoding one token per step with their (h, c) state as the cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cmvl.errors import ConfigError
from cmvl.models.caption_decoder import TextDecoder
from cmvl.models.tokens import Tokens

ATTENTION_CHOICES = ("none", "soft")


@dataclass(frozen=True)
class LSTMOptions:
    """`task.lstm.*`: how the LSTM decoder sees the image."""

    attention: str = "none"  # none: the image embedding is the first input | soft: attention at every step
    hidden: int | None = None  # LSTM state width (None: model.dim)
    attention_weight: float = 1.0  # soft: weight of the doubly-stochastic regulariser

    @classmethod
    def from_config(cls, values: dict[str, Any] | None) -> LSTMOptions:
        known = {"attention", "hidden", "attention_weight"}
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise ConfigError(f"task.lstm.{unknown[0]}: not a key of task.lstm (keys: {', '.join(sorted(known))})")
        options = cls(**(values or {}))
        if options.attention not in ATTENTION_CHOICES:
            raise ConfigError(f"task.lstm.attention={options.attention}: choose one of {', '.join(ATTENTION_CHOICES)}")
        return options


class LSTMCaptionDecoder(TextDecoder):
    """An LSTM that writes the caption one token at a time; logits from its hidden state (dropout, a linear layer).

    `attention=none` (Show and Tell): the image's mean token, projected, is the LSTM's input before BOS; the image
    is seen only through the state it leaves. `attention=soft` (Show, Attend and Tell): the state starts from the
    mean token, and at every step the previous hidden state attends (additive attention) over the image tokens;
    the gated context joins the token's embedding as the input. The last forward's attention weights B×T×N are kept
    in `last_attention` (on the autograd path) for the doubly-stochastic regulariser.
    """

    def __init__(
        self, *, vocab_size: int, dim: int, hidden: int, max_positions: int, dropout: float, attention: str
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_CHOICES:
            raise ConfigError(f"task.lstm.attention={attention}: choose one of {', '.join(ATTENTION_CHOICES)}")
        self.attention, self.max_positions = attention, max_positions
        self.embed = nn.Embedding(vocab_size, dim)
        if attention == "none":
            self.image_input = nn.Linear(dim, dim)
            self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        else:
            self.init_h, self.init_c = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
            self.att_memory, self.att_hidden = nn.Linear(dim, hidden), nn.Linear(hidden, hidden)
            self.att_score = nn.Linear(hidden, 1)
            self.gate = nn.Linear(hidden, dim)  # β = σ(W h): how much of the context to feed (Xu et al. §4.2.1)
            self.cell = nn.LSTMCell(2 * dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab_size)
        self.last_attention: torch.Tensor | None = None

    def forward(self, tokens: torch.Tensor, memory: Tokens, padding: torch.Tensor | None = None) -> torch.Tensor:
        """tokens B×T (teacher forcing input), memory B×N×D → logits B×T×V. The LSTM is causal: padding at the
        end of a row changes nothing before it, so `padding` is not needed."""
        del padding
        state = self._initial_state(memory)
        if self.attention == "none":
            hidden, _ = self.lstm(self.embed(tokens), state)
            return self.out(self.drop(hidden))
        logits, weights = [], []
        for t in range(tokens.shape[1]):
            step_logits, state, alpha = self._soft_step(tokens[:, t], memory, state)
            logits.append(step_logits)
            weights.append(alpha)
        self.last_attention = torch.stack(weights, dim=1)
        return torch.stack(logits, dim=1)

    def start(self, memory: Tokens) -> Any:
        return self._initial_state(memory)

    def _initial_state(self, memory: Tokens) -> Any:
        """(h, c) before BOS: after reading the image (none), or from the mean image token (soft, with the image
        tokens' attention keys, computed once)."""
        mean = memory.pooled_mean()
        if self.attention == "none":
            _, state = self.lstm(self.image_input(mean)[:, None])
            return state  # (h, c), each 1×B×H
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)), self.att_memory(memory.feats)

    def step(self, sequences: torch.Tensor, memory: Tokens, state: Any) -> tuple[torch.Tensor, Any]:
        """Only the newest token is read; the state carries the rest."""
        token = sequences[:, -1]
        if self.attention == "none":
            hidden, state = self.lstm(self.embed(token)[:, None], state)
            return self.out(self.drop(hidden[:, 0])), state
        logits, state, _ = self._soft_step(token, memory, state)
        return logits, state

    def reorder(self, state: Any, source: torch.Tensor) -> Any:
        if self.attention == "none":
            return tuple(s[:, source] for s in state)
        return tuple(s[source] for s in state)

    def _soft_step(
        self, token: torch.Tensor, memory: Tokens, state: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        h, c, keys = state
        scores = self.att_score(torch.tanh(keys + self.att_hidden(h)[:, None])).squeeze(-1)  # B×N
        alpha = scores.float().masked_fill(~memory.mask, -torch.inf).softmax(dim=-1).to(scores.dtype)
        context = torch.sigmoid(self.gate(h)) * (alpha[..., None] * memory.feats).sum(dim=1)
        h, c = self.cell(torch.cat([self.embed(token), context], dim=-1), (h, c))
        return self.out(self.drop(h)), (h, c, keys), alpha


def doubly_stochastic_penalty(attention: torch.Tensor, steps: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
    """Xu et al.'s regulariser Σᵢ (1 − Σₜ αₜᵢ)², mean over captions: every image token should be looked at about
    once over the caption. `attention` B×T×N, `steps` B×T (True where the step writes a word), `memory_mask` B×N."""
    looked = (attention * steps[..., None].to(attention.dtype)).sum(dim=1)  # B×N
    return ((1 - looked).square() * memory_mask.to(looked.dtype)).sum(dim=1).mean()
