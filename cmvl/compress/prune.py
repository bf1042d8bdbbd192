"""Pruning a run's model by weight magnitude: `unstructured` zeroes the smallest weights of every linear layer (the
tensors keep their shape), `structured` removes whole attention heads (cmvl's `MultiHeadAttention`) and hidden
channels of the feed-forward blocks (linear → activation → dropout → linear, and BERT's intermediate/output pair),
so the model is smaller and faster. An optional fine-tune trains the pruned model on the run's training split."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from cmvl.errors import ConfigError
from cmvl.models.attention import MultiHeadAttention
from cmvl.models.compression import replace_module

KINDS = ("structured", "unstructured")


def check_amount(amount: float) -> None:
    if not 0 < amount < 1:
        raise ConfigError(f"compress: prune.amount={amount}: must be a share between 0 and 1 (e.g. 0.3)")


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def prune_unstructured(model: nn.Module, amount: float) -> None:
    """Zeroes the share `amount` of smallest-magnitude weights over all linear layers together (global L1); the
    pruning masks stay on the modules (`make_permanent` removes them) so a fine-tune keeps the zeros."""
    check_amount(amount)
    targets = [(m, "weight") for _, m in linear_layers(model)]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=amount)


def make_permanent(model: nn.Module) -> None:
    """The pruning masks folded into the weights (plain tensors again)."""
    for _, module in linear_layers(model):
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, "weight")


def _keep(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Indices (ascending) of the units to keep: all but the `amount` share with the lowest score, at least one."""
    count = max(1, scores.numel() - int(round(amount * scores.numel())))
    return scores.topk(count).indices.sort().values


def _rows(layer: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """`layer` with only the output units `keep`."""
    new = nn.Linear(layer.in_features, len(keep), bias=layer.bias is not None)
    with torch.no_grad():
        new.weight.copy_(layer.weight[keep])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[keep])
    return new


def _columns(layer: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    """`layer` reading only the input units `keep`."""
    new = nn.Linear(len(keep), layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        new.weight.copy_(layer.weight[:, keep])
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def prune_heads(attention: MultiHeadAttention, amount: float) -> None:
    """Removes the `amount` share of heads whose q/k/v rows and output columns have the smallest L2 norm."""
    d = attention.head_dim
    per_head = sum(p.weight.detach().view(attention.heads, d, -1).pow(2).sum((1, 2)) for p in attention.projections())
    per_head = per_head + attention.out_proj.weight.detach().view(-1, attention.heads, d).pow(2).sum((0, 2))
    heads = _keep(per_head, amount)
    channels = (heads[:, None] * d + torch.arange(d)).flatten()
    attention.q_proj, attention.k_proj, attention.v_proj = (_rows(p, channels) for p in attention.projections())
    attention.out_proj = _columns(attention.out_proj, channels)
    attention.heads = len(heads)


def feed_forward_pairs(model: nn.Module) -> Iterator[tuple[str, str]]:
    """(first, second) names of the linear layers around every feed-forward hidden layer: cmvl's `mlp`
    (Linear, activation, Dropout, Linear) and BERT's `intermediate.dense` → `output.dense`."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Sequential) and len(module) == 4:
            first, second = module[0], module[3]
            if isinstance(first, nn.Linear) and isinstance(second, nn.Linear) and isinstance(module[2], nn.Dropout):
                yield f"{prefix}0", f"{prefix}3"
        intermediate, output = getattr(module, "intermediate", None), getattr(module, "output", None)
        if isinstance(getattr(intermediate, "dense", None), nn.Linear) and isinstance(
            getattr(output, "dense", None), nn.Linear
        ):
            yield f"{prefix}intermediate.dense", f"{prefix}output.dense"


def prune_channels(model: nn.Module, first_name: str, second_name: str, amount: float) -> None:
    """Removes the `amount` share of hidden channels between two linear layers, by the L2 norm of each channel's
    incoming and outgoing weights."""
    first, second = model.get_submodule(first_name), model.get_submodule(second_name)
    scores = first.weight.detach().pow(2).sum(1) + second.weight.detach().pow(2).sum(0)
    keep = _keep(scores, amount)
    replace_module(model, first_name, _rows(first, keep))
    replace_module(model, second_name, _columns(second, keep))


def prune_structured(model: nn.Module, amount: float) -> dict[str, int]:
    """Removes the `amount` share of every attention module's heads and every feed-forward block's channels;
    returns how many modules of each kind were pruned."""
    check_amount(amount)
    attention = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    for module in attention:
        prune_heads(module, amount)
    pairs = list(feed_forward_pairs(model))
    for first, second in pairs:
        prune_channels(model, first, second, amount)
    return {"attention_modules": len(attention), "feed_forward_blocks": len(pairs)}
