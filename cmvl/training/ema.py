"""An exponential moving average of the weights (`ema.decay`), kept beside the raw weights.

PyTorch's `AveragedModel` with `get_ema_multi_avg_fn` keeps the average: after the first optimizer step it is a
copy of the weights, then after each step `ema = decay · ema + (1 − decay) · weights`. Buffers (batch-norm
statistics) are not averaged: the average's follow the model's. The average lives in the training module as
`ema`, so every checkpoint holds it under `ema.module.*` beside the raw weights (`model.*`), with the number of
updates (`ema.n_averaged`): a resumed run continues the same average, bit for bit. Validation (and so the best
checkpoint) scores the average, and a run restored from a checkpoint that has one (`cmvl eval`, `predict`,
`export`, `cmvl.load_run`) takes the average's weights (`restored_weights`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cmvl.training.checkpoint_schema import STATE_PREFIX

EMA_ATTRIBUTE = "ema"  # the training module's attribute holding the average
EMA_PREFIX = f"{EMA_ATTRIBUTE}.module."  # the averaged weights in a checkpoint's state_dict
EMA_COUNT = f"{EMA_ATTRIBUTE}.n_averaged"  # how many optimizer steps the average has taken in


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """The moving average of `model`'s weights with `decay` (0 < decay < 1), updated by `update_parameters(model)`
    after each optimizer step. Its copy of the weights takes no gradient (DDP leaves it alone)."""
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
    average.requires_grad_(False)
    return average


def has_average(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith(EMA_PREFIX) for key in state_dict)


def restored_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's weights as a restored model loads them, under the model's own names: the moving average's
    when the checkpoint has one, the raw weights otherwise. Any other entry keeps its full name, so a crafted
    extra one is reported as an unexpected weight."""
    averaged = has_average(state_dict)
    chosen = EMA_PREFIX if averaged else STATE_PREFIX
    weights = {}
    for key, value in state_dict.items():
        if key.startswith(chosen):
            weights[key.removeprefix(chosen)] = value
        elif not (averaged and (key == EMA_COUNT or key.startswith(STATE_PREFIX))):
            weights[key] = value
    return weights
