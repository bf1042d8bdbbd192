"""`compress_checkpoint`: restores a run, compresses a copy of its model, writes the compressed model (a checkpoint
`cmvl eval` and `cmvl.load_run` read, or an int8 ONNX model for `int8_static`) and the side-by-side report."""

from __future__ import annotations

import copy
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cmvl.atomic_file import atomic_write
from cmvl.batch import Batch
from cmvl.compress import prune
from cmvl.compress.measure import Forward, measure, parameter_count
from cmvl.compress.report import build_report, write_report
from cmvl.errors import UserError
from cmvl.export.staging import check_new_folder, staged_folder
from cmvl.models.compression import COMPRESSION_KEY, INT8_METHODS, METHODS, quantise_linear_layers
from cmvl.run import Run, load_run, restore_run, run_config
from cmvl.training.checkpoint_schema import CHECKPOINT_KEY, STATE_PREFIX
from cmvl.training.checkpoints import load_checkpoint

COMPRESSED_CHECKPOINT = "model.ckpt"
# What a compressed checkpoint keeps of the original (no optimizer, loop or RNG state: it is for using, not resuming).
KEPT_SECTIONS = ("global_step", "epoch", "pytorch-lightning_version")


@dataclass(frozen=True)
class CompressSettings:
    method: str
    prune_kind: str = "structured"  # structured | unstructured
    prune_amount: float = 0.3
    finetune_epochs: int = 0
    finetune_batches: int | None = None  # at most this many batches per fine-tuning epoch (None: all)
    finetune_lr: float | None = None  # None: the run's last learning rate (cmvl.compress.finetune.finetune_lr)
    # int8_static: training batches that calibrate the activation ranges (on the default VQA model 4 cost 0.57 points
    # of accuracy, 32 cost 0.14)
    calibration_batches: int = 32
    batch_sizes: tuple[int, ...] = (1, 32)
    repeats: int = 20  # timed calls per latency


def compress_checkpoint(path: Path, out: Path, settings: CompressSettings) -> dict[str, Any]:
    """Compresses the checkpoint at `path` into the new folder `out` (model + report.json + report.md) and returns
    the report."""
    if settings.method not in METHODS:
        raise UserError(f"compress: method={settings.method}: choose one of {', '.join(METHODS)}")
    if settings.prune_kind not in prune.KINDS:
        raise UserError(f"compress: prune.kind={settings.prune_kind}: choose one of {', '.join(prune.KINDS)}")
    if settings.method == "prune":
        prune.check_amount(settings.prune_amount)
    check_new_folder(out, "compress")
    checkpoint = load_checkpoint(path)
    cfg = run_config(checkpoint, [])
    original = restore_run(path, checkpoint, cfg, device=torch.device("cpu"))
    if settings.method == "prune" and settings.finetune_epochs and settings.finetune_lr is None:
        from cmvl.compress.finetune import finetune_lr

        settings = dataclasses.replace(settings, finetune_lr=finetune_lr(original))  # recorded in the report
    batches = split_batches(original, "val")
    with staged_folder(out, "compress") as staging:
        if settings.method == "int8_static":
            from cmvl.compress.static_onnx import quantise_static

            before, after, library = quantise_static(original, checkpoint, batches, staging, settings)
        else:
            before, after, library = _compress_torch(original, checkpoint, batches, staging, settings)
        report = build_report(
            method=settings.method,
            settings=_settings_record(settings),
            library=library,
            checkpoint={"path": str(path), "sha256": original.checkpoint.sha256},
            split="val",
            metric=original.task.monitor_key,
            original=before,
            compressed=after,
            compressed_file=after.pop("file"),
        )
        write_report(report, staging)
    return report


def _compress_torch(
    original: Run, checkpoint: dict[str, Any], batches: list[Batch], staging: Path, settings: CompressSettings
) -> tuple[dict[str, Any], dict[str, Any], str]:
    model = copy.deepcopy(original.model)
    if settings.method in INT8_METHODS:
        quantise_linear_layers(model, settings.method)
        import torchao

        library = f"torchao {torchao.__version__} ({type(model).__name__}'s nn.Linear layers)"
    else:
        library = f"torch.nn.utils.prune + cmvl.compress.prune (torch {torch.__version__})"
        _prune(original, model, settings)
    record = {"method": settings.method, "settings": _settings_record(settings)}
    file = staging / COMPRESSED_CHECKPOINT
    save_compressed(checkpoint, model, record, file)
    restored = load_run(file)  # what cmvl eval reads: the file, not the object in memory
    original_file = staging / ".original-weights.pt"  # the original's weights saved the same way, for its size
    torch.save({STATE_PREFIX + k: v for k, v in original.model.state_dict().items()}, original_file)
    before = _measured(original, _torch_forward(original), batches, original_file, settings)
    original_file.unlink()
    after = _measured(restored, _torch_forward(restored), batches, file, settings)
    after["file"] = COMPRESSED_CHECKPOINT
    return before, after, library


def _prune(original: Run, model: torch.nn.Module, settings: CompressSettings) -> None:
    if settings.prune_kind == "structured":
        prune.prune_structured(model, settings.prune_amount)
    else:
        prune.prune_unstructured(model, settings.prune_amount)
    if settings.finetune_epochs:
        from cmvl.compress.finetune import finetune

        assert settings.finetune_lr is not None  # compress_checkpoint resolves the default before pruning
        finetune(
            original, model, epochs=settings.finetune_epochs, lr=settings.finetune_lr,
            max_batches=settings.finetune_batches,
        )  # fmt: skip
    prune.make_permanent(model)


def save_compressed(checkpoint: dict[str, Any], model: torch.nn.Module, record: dict[str, Any], file: Path) -> None:
    """A checkpoint of `model` with the original's config, tokenizer and task state and the compression record."""
    saved = {k: checkpoint[k] for k in KEPT_SECTIONS if k in checkpoint}
    saved["state_dict"] = {STATE_PREFIX + k: v for k, v in model.state_dict().items()}
    saved[CHECKPOINT_KEY] = {**checkpoint[CHECKPOINT_KEY], COMPRESSION_KEY: record}
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    with atomic_write(file, "wb") as f:
        f.write(buffer.getvalue())


def _torch_forward(run: Run) -> Forward:
    model = run.model.eval()
    return lambda batch: run.task.eval_forward(model, batch)


def _measured(run: Run, forward: Forward, batches: list[Batch], file: Path, settings: CompressSettings) -> dict:
    result = measure(
        forward, run.task, batches, file, batch_sizes=settings.batch_sizes, repeats=settings.repeats
    )  # fmt: skip
    return {**result, "parameters": parameter_count(run.model)}


def split_batches(run: Run, split: str) -> list[Batch]:
    """Every batch of `split`, as `cmvl eval` reads them."""
    from cmvl.training.build import build_datamodule

    datamodule = build_datamodule(run.config, task=run.task, tokenizer=run.tokenizer)
    return list(datamodule.eval_dataloaders(split)[run.task.name])


def _settings_record(settings: CompressSettings) -> dict[str, Any]:
    record: dict[str, Any] = {"method": settings.method}
    if settings.method == "prune":
        record |= {"kind": settings.prune_kind, "amount": settings.prune_amount}
        record["finetune_epochs"] = settings.finetune_epochs
        if settings.finetune_epochs and settings.finetune_batches is not None:
            record["finetune_batches"] = settings.finetune_batches
        if settings.finetune_epochs:
            record["finetune_lr"] = settings.finetune_lr
    if settings.method == "int8_static":
        record["calibration_batches"] = settings.calibration_batches
    return record
