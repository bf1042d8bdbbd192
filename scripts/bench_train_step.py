"""Training throughput of cmvl (Lightning Trainer + LitModule) against a plain PyTorch loop, same run.

Both train the same freshly built model on the same batches for the same number of steps; the ratio shows the
framework's overhead. Usage:

    .venv/bin/python scripts/bench_train_step.py [--steps 200] [hydra overrides ...]
    .venv/bin/python scripts/bench_train_step.py --steps 100 trainer.accelerator=gpu trainer.precision=bf16-mixed
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch

from cmvl.config.compose import compose_config
from cmvl.training.build import build_datamodule, build_lit_module, single_device_trainer


def _plain_loop(lit, batches, device: torch.device) -> float:
    model, task = lit.model.to(device), lit.task
    optimizer = lit.optim_cfg["optimizer"](model.parameters())  # the configured optimiser (fused AdamW by default)
    start = None
    for i, batch in enumerate(batches):
        if i == 5:  # warm-up steps excluded
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = batch.to(device, non_blocking=True)
        loss = task.loss(task.forward(model, batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


class _Replay:
    """The materialised batches as one iterable (a bare list would be read as a list of loaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Timer(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 5:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args, overrides = parser.parse_known_args()
    cfg = compose_config(["data.num_workers=0", "paths.output_dir=/tmp/cmvl-bench", *overrides])
    pl.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    loader = datamodule.train_dataloader()
    batches = []
    for batch in loader:  # materialise the batches: both sides measure compute, not image decoding
        batches.append(batch)
        if len(batches) == args.steps:
            break
    steps = len(batches)
    device = torch.device("cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu")
    plain = _plain_loop(build_lit_module(cfg, datamodule), batches, device)

    timer = _Timer()
    trainer = single_device_trainer(
        cfg, max_steps=steps, enable_progress_bar=False, gradient_clip_val=1.0, limit_val_batches=0, callbacks=[timer]
    )
    trainer.fit(build_lit_module(cfg, datamodule), train_dataloaders=_Replay(batches))
    size = len(batches[0])
    measured = steps - 5
    plain_rate, cmvl_rate = measured * size / plain, measured * size / timer.seconds
    print(f"steps={measured} batch={size} device={device.type} precision={cfg.trainer.precision}")
    print(f"plain PyTorch loop : {plain_rate:8.1f} samples/s")
    print(f"cmvl (Lightning)   : {cmvl_rate:8.1f} samples/s")
    print(f"ratio cmvl/plain   : {cmvl_rate / plain_rate:8.3f}")


if __name__ == "__main__":
    main()
