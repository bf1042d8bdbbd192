"""The trainer's accelerator, devices and precision against the machine, before any process starts.

Lightning raises a multi-line error for a GPU that is not there, starts one process per requested CPU "device"
(`trainer.devices=99` on a 2-core machine runs it out of memory) and silently trains fp16 on CPU as bf16.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cmvl.errors import ConfigError

GPU_ACCELERATORS = ("gpu", "cuda")
FP16_PRECISIONS = ("16", "16-mixed")  # what Lightning replaces by bf16-mixed on CPU


def usable_cores() -> int:
    """Cores this process may run on (a container or `taskset` may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    import torch

    return torch.backends.mps.is_available()


def _registered_available(accelerator: str) -> bool:
    """Whether Lightning's accelerator of this name (tpu, or one a plugin registers) finds its hardware."""
    from pytorch_lightning.accelerators import AcceleratorRegistry

    if accelerator not in AcceleratorRegistry:
        return False
    try:
        return bool(AcceleratorRegistry[accelerator]["accelerator"].is_available())
    except Exception:  # its library is missing or broken: no such hardware to use
        return False


def check_hardware(cfg: DictConfig, *, check_devices: bool = True) -> None:
    """Raise `ConfigError` when `trainer.accelerator`, `trainer.devices` (with `check_devices`) or
    `trainer.precision` ask for what this machine does not have."""
    accelerator = str(cfg.trainer.accelerator)
    gpus = _gpu_count()
    if accelerator in GPU_ACCELERATORS and gpus == 0:
        raise ConfigError(
            f"trainer.accelerator={accelerator}: no CUDA GPU is visible on this machine; use trainer.accelerator=cpu "
            "(or trainer=cpu), or run where `nvidia-smi` lists a GPU"
        )
    if accelerator == "mps" and not _mps_available():
        raise ConfigError("trainer.accelerator=mps: Apple's MPS backend is not available here; use trainer=cpu")
    if accelerator not in ("auto", "cpu", "mps", *GPU_ACCELERATORS) and not _registered_available(accelerator):
        raise ConfigError(
            f"trainer.accelerator={accelerator}: no {accelerator.upper()} is available on this machine (or its "
            "software is not installed); use trainer.accelerator=auto, cpu or gpu"
        )
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and gpus == 0 and not _mps_available())
    precision = str(cfg.trainer.precision)
    if on_cpu and precision in FP16_PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision}: float16 mixed precision needs a GPU (on CPU Lightning would silently "
            "train in bfloat16); use trainer.precision=bf16-mixed on CPU, or 32-true"
        )
    if check_devices and accelerator in ("cpu", "auto", *GPU_ACCELERATORS):
        devices = OmegaConf.select(cfg, "trainer.devices")
        if isinstance(devices, ListConfig):
            devices = OmegaConf.to_container(devices)
        _check_devices(devices, gpus=0 if on_cpu else gpus, cores=usable_cores())


def _check_devices(devices: Any, *, gpus: int, cores: int) -> None:
    """`devices`: "auto", a count (-1 = all), a list of GPU ids, or a string of either ("2", "0,1", "[0, 1]")."""
    if devices == "auto":
        return
    parsed = _parse_devices(devices)
    if parsed is None:
        raise ConfigError(
            f"trainer.devices={devices}: must be auto, a positive number of devices, -1 for all, or a list of GPU ids "
            "such as [0,1]"
        )
    if gpus == 0:  # CPU: each device is one process
        if parsed == 0:  # Lightning's CPU accelerator refuses -1 (all devices): a count of processes is explicit
            raise ConfigError(
                f"trainer.devices={devices}: -1 (all devices) means all GPUs; training runs on CPU, where each device "
                f"is a training process: give a count (this machine has {cores} usable CPU cores)"
            )
        if isinstance(parsed, list):
            raise ConfigError(f"trainer.devices={devices}: a list of GPU ids, but training runs on CPU; give a count")
        if parsed > cores:
            raise ConfigError(
                f"trainer.devices={devices}: this machine has {cores} usable CPU cores and each device is a training "
                f"process; use at most trainer.devices={cores}"
            )
        return
    if isinstance(parsed, list):
        absent = [i for i in parsed if i >= gpus]
        if absent:
            raise ConfigError(
                f"trainer.devices={devices}: GPU ids {', '.join(map(str, absent))} do not exist (this machine has "
                f"{gpus}: ids 0 to {gpus - 1})"
            )
    elif parsed > gpus:
        raise ConfigError(
            f"trainer.devices={devices}: this machine has {gpus} GPU{'s' if gpus > 1 else ''}; use at most "
            f"trainer.devices={gpus} (or -1 for all)"
        )


def _parse_devices(devices: Any) -> int | list[int] | None:
    """A count (-1 → 0, meaning "all", never too many) or a list of ids; None if it is neither."""
    if isinstance(devices, str):
        text = devices.strip().strip("[]").strip()
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if "," in text or devices.strip().startswith("["):
            return [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else None
        devices = int(text) if text.lstrip("-").isdigit() else None
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return 0 if devices == -1 else devices if devices >= 1 else None
    if (
        isinstance(devices, list)
        and devices
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in devices)
    ):
        return devices
    return None
