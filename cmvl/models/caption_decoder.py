"""Text decoders conditioned on vision tokens, and the beam search they share."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from cmvl.models.attention import MultiHeadAttention
from cmvl.models.fusion.base import mlp
from cmvl.models.tokens import Tokens


class TextDecoder(nn.Module):
    """forward(tokens B×T, memory, padding) → next-token logits B×T×V, and beam search over it.

    Decoding goes through `start` / `step` / `reorder`: by default every step re-reads the whole prefix; a decoder
    with a key/value cache (a Hugging Face LM) feeds only the newest token and reorders its cache with the beams.
    """

    max_positions: int  # longest token sequence (BOS included) the decoder reads

    def start(self, memory: Tokens) -> Any:
        """The decoding state of a batch before its first step (default: none)."""
        del memory
        return None

    def step(self, sequences: torch.Tensor, memory: Tokens, state: Any) -> tuple[torch.Tensor, Any]:
        """Logits of the next token after each of the `sequences` B×T, and the new state."""
        return self(sequences, memory)[:, -1], state

    def reorder(self, state: Any, source: torch.Tensor) -> Any:
        """The state after beam selection: row i continues row `source[i]`."""
        del source
        return state

    def longest_output(self, memory: Tokens) -> int:
        """How many tokens after BOS fit the decoder's positions."""
        del memory
        return self.max_positions - 1

    @torch.no_grad()
    def generate(
        self,
        memory: Tokens,
        *,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        max_length: int,
        beam_size: int = 1,
        length_penalty: float = 0.0,
    ) -> torch.Tensor:
        """Beam search (greedy when `beam_size` is 1) → token ids B×T without BOS; after EOS, `pad_id`.

        Beams are ranked by summed log-probability divided by length**length_penalty (0: no normalisation).
        """
        batch, k = memory.feats.shape[0], beam_size
        max_length = min(max_length, self.longest_output(memory))
        device = memory.feats.device
        memory = Tokens(memory.feats.repeat_interleave(k, 0), memory.mask.repeat_interleave(k, 0), memory.grid)
        state = self.start(memory)
        sequences = torch.full((batch * k, 1), bos_id, dtype=torch.long, device=device)
        scores = torch.zeros(batch, k, device=device)
        scores[:, 1:] = -torch.inf  # all beams start identical: expand only the first
        finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
        lengths = torch.zeros(batch * k, device=device)
        base = (torch.arange(batch, device=device) * k)[:, None]
        for _ in range(max_length):
            logits, state = self.step(sequences, memory, state)
            logp = logits.float().log_softmax(-1)
            vocab = logp.shape[-1]
            # A finished beam only extends with padding, at no cost, so its score is carried unchanged.
            logp[finished] = -torch.inf
            logp[finished, pad_id] = 0.0
            candidates = (scores.view(-1, 1) + logp).view(batch, k * vocab)
            scores, flat = candidates.topk(k, dim=1)
            source = (base + flat // vocab).view(-1)
            token = (flat % vocab).view(-1)
            sequences = torch.cat([sequences[source], token[:, None]], dim=1)
            state = self.reorder(state, source)
            was_finished = finished[source]
            lengths = lengths[source] + (~was_finished).float()
            finished = was_finished | (token == eos_id)
            if bool(finished.all()):
                break
        normalised = scores.view(-1) / lengths.clamp_min(1).pow(length_penalty)
        best = base.view(-1) + normalised.view(batch, k).argmax(dim=1)
        return sequences[best, 1:]


class DecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer: masked self-attention, cross-attention to the memory, GELU feed-forward,
    each a residual branch (the function of `nn.TransformerDecoderLayer(norm_first=True, activation="gelu")`)."""

    def __init__(self, dim: int, heads: int, dropout: float, *, heads_key: str = "heads") -> None:
        super().__init__()
        # Built in nn.TransformerDecoderLayer's order, so the same seed draws the same parameters.
        self.self_attn = MultiHeadAttention(dim, heads, dropout, heads_key=heads_key)
        self.cross_attn = MultiHeadAttention(dim, heads, dropout, heads_key=heads_key)
        self.ff = mlp(dim, 4 * dim, dim, dropout)
        self.norm_self, self.norm_cross, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, memory: Tokens, causal: torch.Tensor, padding: torch.Tensor | None
    ) -> torch.Tensor:
        """x B×T×D; `causal` T×T True where a position may not attend; `padding` B×T True at pads."""
        h = self.norm_self(x)
        x = x + self.drop(self.self_attn(h, h, h, key_padding_mask=padding, attn_mask=causal)[0])
        h = self.norm_cross(x)
        x = x + self.drop(self.cross_attn(h, memory.feats, memory.feats, key_padding_mask=~memory.mask)[0])
        return x + self.drop(self.ff(self.norm_ff(x)))


class CaptionDecoder(TextDecoder):
    """Token + position embeddings → `layers` pre-norm transformer decoder layers (causal self-attention,
    cross-attention over the image's tokens) → logits over the tokenizer's vocabulary (weights tied to the
    input embedding). `heads_key` is the config key `heads` came from, named in the error when it does not divide
    `dim`."""

    def __init__(
        self,
        *,
        vocab_size: int,
        dim: int,
        layers: int,
        heads: int,
        max_positions: int,
        dropout: float,
        heads_key: str = "task.heads",
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_positions, dim)
        # Copies of one layer, as nn.TransformerDecoder made them: the same seed gives the same parameters as before.
        layer = DecoderLayer(dim, heads, dropout, heads_key=heads_key)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab_size, bias=False)
        self.out.weight = self.embed.weight
        self.max_positions = max_positions
        nn.init.normal_(self.embed.weight, std=dim**-0.5)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, memory: Tokens, padding: torch.Tensor | None = None) -> torch.Tensor:
        """tokens B×T (teacher forcing input), memory B×N×D → logits B×T×V. `padding` B×T is True at pads."""
        length = tokens.shape[1]
        x = self.embed(tokens) + self.position(torch.arange(length, device=tokens.device))
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)  # True = may not attend
        for layer in self.layers:
            x = layer(x, memory, causal, padding)
        return self.out(self.norm(x))
