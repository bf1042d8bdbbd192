"""What a compressed checkpoint's model is made of, so `cmvl.load_run` rebuilds it before loading its weights.

`cmvl compress` records its method in the checkpoint (`cmvl.compression`); the model the config builds is then
changed the same way before `load_state_dict`: int8 methods quantise the same `nn.Linear` layers with torchao (so
the int8 weights load into int8 layers), structured pruning gives every linear layer the smaller shape its saved
weight has (and each attention module the head count that follows). Nothing here reads the data or imports cmvl's
run or evaluation code (they import this).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cmvl.errors import CheckpointError
from cmvl.models.attention import MultiHeadAttention

COMPRESSION_KEY = "compression"  # in the checkpoint's cmvl section: {"method": ..., "settings": {...}}
INT8_METHODS = ("int8_dynamic", "int8_weight_only")
METHODS = (*INT8_METHODS, "int8_static", "prune")


def torchao_config(method: str) -> Any:
    """torchao's quantisation config of an int8 method (weights int8 per output channel; `int8_dynamic` also
    quantises each activation row at run time)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    return Int8DynamicActivationInt8WeightConfig() if method == "int8_dynamic" else Int8WeightOnlyConfig()


def quantise_linear_layers(model: nn.Module, method: str) -> None:
    """Every `nn.Linear` of `model` as torchao's int8 layer of `method`, in place."""
    from torchao.quantization import quantize_

    quantize_(model, torchao_config(method), filter_fn=lambda module, _name: isinstance(module, nn.Linear))


def fit_linear_shapes(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Replaces each `nn.Linear` whose saved weight is smaller (structured pruning) by one of the saved shape, and
    sets each attention module's head count from its projections' width."""
    for name, module in list(model.named_modules()):
        weight = state_dict.get(f"{name}.weight")
        if not isinstance(module, nn.Linear) or weight is None or weight.shape == module.weight.shape:
            continue
        out_features, in_features = weight.shape
        if out_features > module.out_features or in_features > module.in_features:
            raise CheckpointError(f"pruned weight {name}.weight {tuple(weight.shape)} is larger than the model's")
        replace_module(model, name, nn.Linear(in_features, out_features, bias=module.bias is not None))
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.heads = module.q_proj.out_features // module.head_dim


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def prepare_compressed_model(model: nn.Module, record: Any, state_dict: dict[str, torch.Tensor]) -> None:
    """`model` (as the config builds it) changed to what the compressed checkpoint's `record` says it became, so
    its `state_dict` loads; a record cmvl does not know is one line."""
    method = record.get("method") if isinstance(record, dict) else None
    if method in INT8_METHODS:
        quantise_linear_layers(model, method)
    elif method == "prune":
        fit_linear_shapes(model, state_dict)
    else:
        raise CheckpointError(f"unknown compression {record!r:.80} in the checkpoint (known: {', '.join(METHODS)})")
