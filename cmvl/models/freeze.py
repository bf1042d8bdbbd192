"""`freeze` for pretrained encoders: none | all | N (the embeddings and the first N blocks stop learning)."""

from __future__ import annotations

from torch import nn

from cmvl.errors import ConfigError


def _blocks(model: nn.Module) -> nn.ModuleList | nn.Sequential:
    """The model's stack of blocks: its longest `nn.ModuleList` / `nn.Sequential` of modules."""
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList | nn.Sequential) and len(m) > 1]
    if not stacks:
        raise ConfigError(f"freeze: {type(model).__name__} has no stack of blocks to freeze")
    return max(stacks, key=len)


def apply_freeze(model: nn.Module, freeze: str | int, what: str) -> None:
    if freeze == "none":
        return
    if freeze == "all":
        model.requires_grad_(False)
        return
    if not isinstance(freeze, int) or isinstance(freeze, bool) or freeze < 0:
        raise ConfigError(f"{what}.freeze={freeze!r}: must be none, all or a number of leading blocks")
    blocks = _blocks(model)
    if freeze > len(blocks):
        raise ConfigError(f"{what}.freeze={freeze}: the model has only {len(blocks)} blocks")
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if "embed" in leaf or leaf in ("wte", "wpe", "shared", "conv_proj", "patch_embed", "stem", "class_token"):
            module.requires_grad_(False)
    for name, param in model.named_parameters(recurse=False):
        if "token" in name or "pos" in name:
            param.requires_grad_(False)
    for block in list(blocks)[:freeze]:
        block.requires_grad_(False)
