"""Text decoders conditioned on vision tokens, and the beam search they share."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

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
        memory = Tokens(memory.feats.repeat_interleave(k, 0), memory.mask.repeat_interleave(k, 0))
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


class CaptionDecoder(TextDecoder):
    """Token + position embeddings → `layers` pre-norm transformer decoder layers (causal self-attention,
    cross-attention over the image's tokens) → logits over the tokenizer's vocabulary (weights tied to the
    input embedding)."""

    def __init__(
        self, *, vocab_size: int, dim: int, layers: int, heads: int, max_positions: int, dropout: float
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_positions, dim)
        layer = nn.TransformerDecoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(dim))
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
        x = self.layers(
            x,
            memory.feats,
            tgt_mask=causal,
            tgt_is_causal=True,
            tgt_key_padding_mask=padding,
            memory_key_padding_mask=~memory.mask,
        )
        return self.out(x)
