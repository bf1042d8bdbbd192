"""Multi-head attention the rest of the toolbox can see into: q/k/v/out are plain `nn.Linear` (dynamic quantisation
and head pruning find them), and the weights it records are the ones the output is computed from (Grad-CAM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from cmvl.errors import ConfigError


class MultiHeadAttention(nn.Module):
    """forward(query B×Nq×D, key B×Nk×D, value B×Nk×D) → (B×Nq×D, per-head weights B×heads×Nq×Nk or None).

    The same function as `nn.MultiheadAttention(dim, heads, dropout, batch_first=True)` with
    `average_attn_weights=False`, and the same masks: `key_padding_mask` B×Nk and `attn_mask` Nq×Nk or
    (B·heads)×Nq×Nk, boolean (True = may not attend) or float (added to the scores). Its checkpoints load (the
    checkpoint migrations, cmvl.training.checkpoint_schema, split `in_proj_weight` into q/k/v). Without weights it
    runs `scaled_dot_product_attention`; with `need_weights` or `record_weights` it computes softmax(QKᵀ/√d)
    itself, so the weights are on the output's autograd path. `record_weights = True` keeps the last forward's
    weights in `weights` for explainability code that cannot change the caller.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, *, heads_key: str = "heads") -> None:
        """`heads_key`: the config key `heads` came from, named in the error when it does not divide `dim`."""
        super().__init__()
        if heads < 1 or dim % heads:
            raise ConfigError(
                f"{heads_key}={heads}: the attention width {dim} (model.dim) is not a multiple of it; pick a divisor"
            )
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.record_weights = False
        self.weights: torch.Tensor | None = None
        # nn.MultiheadAttention's initialisation, draw for draw, so a seed gives the parameters it gave before: the
        # out-projection is an nn.Linear built first, then one xavier_uniform_ over the packed 3·dim×dim in-projection
        # (its fan_out is 3·dim), all in-projection biases and the out-projection bias zero.
        self.q_proj, self.k_proj, self.v_proj = (skip_init(nn.Linear, dim, dim) for _ in range(3))
        self.out_proj = nn.Linear(dim, dim)
        packed = nn.init.xavier_uniform_(torch.empty(3 * dim, dim))
        with torch.no_grad():
            for proj, weight in zip(self.projections(), packed.chunk(3), strict=True):
                proj.weight.copy_(weight)
                proj.bias.zero_()
            self.out_proj.bias.zero_()

    def projections(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        return self.q_proj, self.k_proj, self.v_proj

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = (self._split_heads(proj(x)) for proj, x in zip(self.projections(), (query, key, value), strict=True))
        mask = self._additive_mask(key_padding_mask, attn_mask, q)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights or self.record_weights:
            weights = _masked_softmax((q * self.head_dim**-0.5) @ k.transpose(-2, -1), mask)
            attended = F.dropout(weights, dropout) @ v
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        self.weights = weights if self.record_weights else None
        out = self.out_proj(attended.transpose(1, 2).flatten(2))
        return out, weights if need_weights else None

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:  # B×N×D → B×heads×N×head_dim
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def _additive_mask(
        self, key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None, q: torch.Tensor
    ) -> torch.Tensor | None:
        """Both masks as one float mask added to the scores, broadcastable to B×heads×Nq×Nk (None: no mask)."""
        mask = None
        if key_padding_mask is not None:
            mask = _as_additive(key_padding_mask, q.dtype)[:, None, None, :]
        if attn_mask is not None:
            extra = _as_additive(attn_mask, q.dtype)
            extra = extra.unflatten(0, (-1, self.heads)) if extra.dim() == 3 else extra
            mask = extra if mask is None else mask + extra
        return mask


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(scores + mask) over the keys; a query that may attend to no key gets zero weights (as
    `scaled_dot_product_attention` does), not NaN, in the forward and the backward pass."""
    if mask is None:
        return scores.softmax(dim=-1)
    scores = scores + mask
    blocked = (scores == float("-inf")).all(dim=-1, keepdim=True)
    return scores.masked_fill(blocked, 0.0).softmax(dim=-1).masked_fill(blocked, 0.0)


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = may not attend) as 0 / -inf; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)
