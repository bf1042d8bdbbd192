"""Gradient clipping with the default fused AdamW under every precision: Lightning's mixed-precision plugin refuses
to clip for a fused optimizer, so cmvl clips bf16 gradients itself and gives fp16 (gradient scaler) unfused AdamW."""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from cmvl.tasks.vqa import VQATask
from cmvl.training.lit_module import VLLitModule

OPTIM = {
    "optimizer": functools.partial(torch.optim.AdamW, lr=1e-3, fused=True),
    "weight_decay": 0.01,
    "scheduler": {"warmup_ratio": 0.05, "warmup_steps": None, "min_lr_ratio": 0.1},
}


def _attached(precision: str | pl.plugins.Precision, clip: float) -> VLLitModule:
    lit = VLLitModule(model=nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), task=VQATask(), optim=OPTIM, run_state={})
    precision_args = (
        {"plugins": [precision]} if isinstance(precision, pl.plugins.Precision) else {"precision": precision}
    )
    trainer = pl.Trainer(
        accelerator="cpu", gradient_clip_val=clip, logger=False, enable_checkpointing=False, **precision_args
    )
    trainer.strategy.connect(lit)
    lit.trainer = trainer
    return lit


def _grad_norm(params) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_fused_adamw_gradients_are_clipped(precision, algorithm):
    lit = _attached(precision, clip=0.01)
    optimizer = lit.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"]
    params = list(lit.model.parameters())
    torch.manual_seed(0)
    for p in params:
        p.grad = torch.randn_like(p) * 10
    lit.configure_gradient_clipping(optimizer, gradient_clip_val=0.01, gradient_clip_algorithm=algorithm)
    if algorithm == "norm":
        assert _grad_norm(params) == pytest.approx(0.01, rel=1e-4)
    else:
        assert max(p.grad.abs().max().item() for p in params) <= 0.01


def test_fp16_with_clipping_gets_an_unfused_optimizer():
    # On CPU Lightning turns "16-mixed" into bf16, so give it the fp16 plugin with a gradient scaler explicitly.
    fp16 = pl.plugins.precision.MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))
    lit = _attached(fp16, clip=1.0)
    assert lit.trainer.precision_plugin.scaler is not None
    assert not lit.configure_optimizers()["optimizer"].defaults["fused"]
