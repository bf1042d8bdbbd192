"""Training speed of cmvl against a plain PyTorch loop, measured in one process on the same model, batch and
precision:

  (a) plain PyTorch: the task's forward, loss, backward, clipping and the configured optimiser, on batches already
      on the device (no data loading);
  (b) cmvl's LightningModule under the Lightning Trainer, on the same on-device batches;
  (c) `cmvl train`'s own path (`run_training`: the data module reading image files with the default loader
      workers, checkpoints and logging off) with `callbacks=step_timing`.

It prints samples/s, step time, the share of (c)'s time between steps (data wait plus loop bookkeeping), peak memory,
achieved TFLOP/s (`torch.utils.flop_counter` on one step of (a)) and MFU (with `--peak-tflops`, or the known dense
bf16 peak of the GPU), and the ratios b/a, c/a and c/b. Usage:

    .venv/bin/python scripts/bench_train.py --steps 60                     # the default model, CPU
    .venv/bin/python scripts/bench_train.py --steps 200 trainer=gpu trainer.precision=bf16-mixed
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.flop_counter import FlopCounterMode

from cmvl.config.compose import compose_config
from cmvl.log import configure, verbosity_of
from cmvl.training.build import build_datamodule, build_lit_module, single_device_trainer

# Dense bf16 tensor-core peaks (TFLOP/s, vendor data sheets) for MFU; other devices need --peak-tflops.
KNOWN_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 125.0}


def _autocast(device: torch.device, precision: str):
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak resident set so far


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _plain_step(model, task, optimizer, batch, precision: str, device: torch.device) -> None:
    with _autocast(device, precision):
        loss = task.loss(task.forward(model, batch), batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def plain_loop(lit, batches, *, warmup: int, precision: str, device: torch.device) -> dict[str, float]:
    """(a): seconds of the measured steps, and the FLOPs of one training step."""
    model, task = lit.model.to(device), lit.task
    optimizer = lit.optim_cfg["optimizer"](model.parameters())  # the configured optimiser (fused AdamW on a GPU)
    with FlopCounterMode(display=False) as counter:
        _plain_step(model, task, optimizer, batches[0], precision, device)
    flops = counter.get_total_flops()
    _reset_peak(device)
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        _plain_step(model, task, optimizer, batch, precision, device)
    _sync(device)
    return {"seconds": time.perf_counter() - start, "flops_per_step": flops, "peak_mb": _peak_memory_mb(device)}


class _Replay:
    """The materialised batches as one iterable (a bare list would be read as a list of loaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def lightning_loop(cfg, datamodule, batches, *, warmup: int, device: torch.device) -> dict[str, float]:
    """(b): the LitModule under the Trainer on the same on-device batches."""
    from cmvl.training.step_timing import StepTiming

    timing = StepTiming(out=str(Path(tempfile.mkdtemp()) / "b.json"), warmup=warmup)
    trainer = single_device_trainer(
        cfg,
        max_steps=len(batches),
        enable_progress_bar=False,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        callbacks=[timing],
    )
    _reset_peak(device)
    trainer.fit(build_lit_module(cfg, datamodule), train_dataloaders=_Replay(batches))
    return {**timing.summary(), "peak_mb": _peak_memory_mb(device)}


def cmvl_train(overrides: list[str], *, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    """(c): `run_training` itself, from the image files, with the default loader workers."""
    from cmvl.training.train import run_training

    out = Path(tempfile.mkdtemp(prefix="cmvl-bench-"))
    cfg = compose_config(
        [
            *overrides,
            f"paths.output_dir={out}",
            "logger=none",
            "callbacks=step_timing",
            f"callbacks.step_timing.warmup={warmup}",
            f"trainer.max_steps={steps}",
            "trainer.max_epochs=1000",
            "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false",
        ]
    )
    _reset_peak(device)
    run_training(cfg)
    return {**json.loads((out / "step_timing.json").read_text()), "peak_mb": _peak_memory_mb(device)}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per measurement (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5, help="steps not measured (allocator, compilation, workers)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    args, overrides = parser.parse_known_args(argv)
    configure(verbosity_of(overrides, default="quiet"))  # cmvl's lines as the CLI filters them; the table is printed
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")
    total = args.steps + args.warmup
    cfg = compose_config([*overrides, "paths.output_dir=" + tempfile.mkdtemp(prefix="cmvl-bench-")])
    accelerator = str(cfg.trainer.accelerator)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if on_gpu else "cpu")
    pl.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.prepare()
    batches = []
    while len(batches) < total:  # materialise the batches on the device: (a) and (b) measure compute only
        for batch in datamodule.train_dataloader():
            batches.append(batch.to(device))
            if len(batches) == total:
                break
    precision = str(cfg.trainer.precision)
    a = plain_loop(build_lit_module(cfg, datamodule), batches, warmup=args.warmup, precision=precision, device=device)
    a["samples_per_second"] = args.steps * len(batches[0]) / a["seconds"]
    a["step_seconds_mean"] = a["seconds"] / args.steps
    b = lightning_loop(cfg, datamodule, batches, warmup=args.warmup, device=device)
    c = cmvl_train(overrides, steps=total, warmup=args.warmup, device=device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in KNOWN_PEAK_TFLOPS.items() if k in name), None)
    print(
        f"device={name} torch={torch.__version__} precision={precision} batch={len(batches[0])} "
        f"steps={args.steps} (+{args.warmup} warm-up) flops/step={a['flops_per_step'] / 1e9:.2f} GFLOP"
    )
    print(f"{'':24}{'samples/s':>11}{'ms/step':>10}{'between':>9}{'peak MB':>10}{'TFLOP/s':>9}{'MFU':>7}")
    rows = {"a plain PyTorch": a, "b cmvl LitModule": b, "c cmvl train (files)": c}
    for label, row in rows.items():
        tflops = a["flops_per_step"] * row["samples_per_second"] / len(batches[0]) / 1e12
        row["tflops"] = tflops
        mfu = f"{tflops / peak:7.1%}" if peak else "    n/a"
        between = row.get("between_steps_share")
        between_text = f"{between:8.1%}" if between is not None and not math.isnan(between) else "       -"
        print(
            f"{label:<24}{row['samples_per_second']:11.1f}{row['step_seconds_mean'] * 1000:10.2f}{between_text} "
            f"{row['peak_mb']:9.0f}{tflops:9.3f}{mfu}"
        )
    ratios = {
        "b/a": b["samples_per_second"] / a["samples_per_second"],
        "c/a": c["samples_per_second"] / a["samples_per_second"],
        "c/b": c["samples_per_second"] / b["samples_per_second"],
    }
    print("ratios  " + "  ".join(f"{k} = {v:.3f}" for k, v in ratios.items()))
    return {**rows, "ratios": ratios}


if __name__ == "__main__":
    main()
