"""Heterogeneous graph fusion: image regions and words are nodes of one graph, with typed edges within and across
the two modalities, mixed by a few layers of relation-aware graph attention (plain PyTorch, dense adjacency)."""

from __future__ import annotations

import math

import torch
from torch import nn

from cmvl.errors import ConfigError
from cmvl.models.fusion.base import Fusion, mlp
from cmvl.models.tokens import FusionOutput, Tokens

NODE_TYPES = ("text", "image")


def grid_adjacency(num_nodes: int, grid: tuple[int, int] | None, device: torch.device) -> torch.Tensor:
    """N×N: regions of the image's H×W `grid` (its last H·W tokens) see their 8-neighbourhood and themselves; the
    tokens in front of the grid (a [CLS] token) and every token of an image without a grid (boxes) see all."""
    adjacency = torch.ones(num_nodes, num_nodes, dtype=torch.bool, device=device)
    if grid is None:
        return adjacency
    height, width = grid
    cells = torch.arange(height * width, device=device)
    rows, cols = cells // width, cells % width
    start = num_nodes - height * width
    near = ((rows[:, None] - rows[None, :]).abs() <= 1) & ((cols[:, None] - cols[None, :]).abs() <= 1)
    adjacency[start:, start:] = near
    return adjacency


def sequence_adjacency(num_nodes: int, window: int | None, device: torch.device) -> torch.Tensor:
    """N×N: words within `window` positions of each other (and self); all-to-all when window is None."""
    if window is None:
        return torch.ones(num_nodes, num_nodes, dtype=torch.bool, device=device)
    pos = torch.arange(num_nodes, device=device)
    return (pos[:, None] - pos[None, :]).abs() <= window


class _HeteroGraphLayer(nn.Module):
    """One layer of relation-aware multi-head graph attention over two node types.

    Every destination type has its own query projection; each of the four relations (text→text, image→text,
    text→image, image→image) has its own key and value projections, so a word weighs a neighbouring word and a
    region it looks at on different scales. A node's incoming edges of all relations share one softmax. Pre-norm
    residual update, then a per-type feed-forward.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"fusion: dim={dim} must be divisible by heads={heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.norm = nn.ModuleDict({t: nn.LayerNorm(dim) for t in NODE_TYPES})
        self.query = nn.ModuleDict({t: nn.Linear(dim, dim) for t in NODE_TYPES})
        self.key = nn.ModuleDict({f"{s}_to_{d}": nn.Linear(dim, dim) for s in NODE_TYPES for d in NODE_TYPES})
        self.value = nn.ModuleDict({f"{s}_to_{d}": nn.Linear(dim, dim) for s in NODE_TYPES for d in NODE_TYPES})
        self.out = nn.ModuleDict({t: nn.Linear(dim, dim) for t in NODE_TYPES})
        self.norm_ff = nn.ModuleDict({t: nn.LayerNorm(dim) for t in NODE_TYPES})
        self.ff = nn.ModuleDict({t: mlp(dim, 4 * dim, dim, dropout) for t in NODE_TYPES})
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # B×N×D → B×heads×N×head_dim
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(
        self, nodes: dict[str, Tokens], adjacency: dict[str, torch.Tensor]
    ) -> tuple[dict[str, Tokens], dict[str, torch.Tensor]]:
        normed = {t: self.norm[t](nodes[t].feats) for t in NODE_TYPES}
        updated, weights = {}, {}
        for dst in NODE_TYPES:
            query = self._split(self.query[dst](normed[dst]))
            scores, values = [], []
            for src in NODE_TYPES:
                rel = f"{src}_to_{dst}"
                key = self._split(self.key[rel](normed[src]))
                score = query @ key.transpose(-1, -2) / math.sqrt(self.head_dim)  # B×h×Nd×Ns
                allowed = adjacency[rel].unsqueeze(0) & nodes[src].mask[:, None, :]  # B×Nd×Ns
                scores.append(score.masked_fill(~allowed.unsqueeze(1), float("-inf")))
                values.append(self._split(self.value[rel](normed[src])))
            attn = torch.cat(scores, dim=-1).softmax(dim=-1).nan_to_num(0.0)  # a node with no edge gets zeros
            mixed = attn @ torch.cat(values, dim=2)  # B×h×Nd×head_dim
            feats = nodes[dst].feats + self.drop(self.out[dst](mixed.transpose(1, 2).flatten(2)))
            feats = feats + self.drop(self.ff[dst](self.norm_ff[dst](feats)))
            updated[dst], weights[dst] = nodes[dst].with_feats(feats), attn
        return updated, weights


class GraphFusion(Fusion):
    """Nodes: image tokens (regions or grid cells) and text tokens (words).

    Edges: word–word within `text_window` positions (null = all pairs); region–region between grid neighbours
    (`image_edges: grid`, 8-neighbourhood, or `full`); every word–region pair in both directions. `layers` graph
    attention layers; pooled = projection of mean word node ⊕ mean region node. Attention maps: per layer and
    destination type, B×heads×N_dst×(N_text + N_image) (sources: text nodes first, then image nodes).
    """

    def __init__(
        self,
        *,
        dim: int,
        layers: int = 2,
        heads: int = 4,
        text_window: int | None = 2,
        image_edges: str = "grid",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if image_edges not in ("grid", "full"):
            raise ConfigError(f"fusion.image_edges={image_edges}: must be grid or full")
        self.text_window, self.image_edges = text_window, image_edges
        self.layers = nn.ModuleList(_HeteroGraphLayer(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.ModuleDict({t: nn.LayerNorm(dim) for t in NODE_TYPES})
        self.pool = nn.Sequential(nn.Linear(2 * dim, dim), nn.LayerNorm(dim))

    def adjacency(
        self, num_text: int, num_image: int, grid: tuple[int, int] | None, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Destination × source boolean masks for the four relations (`grid`: the image tokens' grid)."""
        image = (
            grid_adjacency(num_image, grid, device)
            if self.image_edges == "grid"
            else torch.ones(num_image, num_image, dtype=torch.bool, device=device)
        )
        return {
            "text_to_text": sequence_adjacency(num_text, self.text_window, device),
            "image_to_image": image,
            "image_to_text": torch.ones(num_text, num_image, dtype=torch.bool, device=device),
            "text_to_image": torch.ones(num_image, num_text, dtype=torch.bool, device=device),
        }

    def forward(self, vision: Tokens, text: Tokens) -> FusionOutput:
        self._attention = {}
        adjacency = self.adjacency(text.feats.shape[1], vision.feats.shape[1], vision.grid, text.feats.device)
        nodes = {"text": text, "image": vision}
        for i, layer in enumerate(self.layers):
            nodes, weights = layer(nodes, adjacency)
            for dst, w in weights.items():
                self._keep_attention(f"layer{i}.to_{dst}", w if self.record_attention else None)
        nodes = {t: nodes[t].with_feats(self.norm[t](nodes[t].feats)) for t in NODE_TYPES}
        pooled = self.pool(torch.cat([nodes["text"].pooled_mean(), nodes["image"].pooled_mean()], dim=-1))
        return FusionOutput(Tokens.concat(nodes["text"], nodes["image"]), pooled)
