"""How many DataLoader worker processes a run gets (`data.num_workers`, an integer or `auto`)."""

from __future__ import annotations

import os

AUTO = "auto"
MAX_AUTO_WORKERS = 8


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def computes_on_cpu(accelerator: str) -> bool:
    import torch  # here, not at the top: config validation imports this module before torch is needed

    if accelerator == "cpu":
        return True
    if accelerator == "auto":
        return not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return False


def processes_per_node(devices) -> int:
    """Training processes on this machine: `trainer.devices` when it is a count or a list, else 1."""
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, list | tuple):
        return max(1, len(devices))
    if isinstance(devices, str) and devices.isdigit():
        return max(1, int(devices))
    return 1


def resolve_num_workers(setting: int | str, *, accelerator: str, devices=1) -> int:
    """`auto`: on CPU, loader processes get only the cores that the training processes' compute threads leave
    free (torch runs one thread per core; a loader process beside them takes its time from the training step:
    13% slower epochs on 2 cores, README "Measured"); on a GPU, the cores of this process's share of the
    machine minus the one that drives the GPU, at most 8."""
    if setting != AUTO:
        return int(setting)
    cores = available_cores()
    processes = processes_per_node(devices)
    if computes_on_cpu(str(accelerator)):
        import torch

        free = cores - torch.get_num_threads() * processes
        return max(0, min(MAX_AUTO_WORKERS, free // processes))
    return max(1, min(MAX_AUTO_WORKERS, cores // processes - 1))


def start_loader_worker(worker_id: int, rank: int = 0) -> None:
    """A loader worker's first step. Lightning's per-worker seeding, as it adds itself after
    `seed_everything(workers=True)` to a loader without a `worker_init_fn`; then `gc.freeze()`: the objects the
    worker inherited from the training process (every module, the tables, the tokenizer) leave the garbage
    collector's view. Otherwise the worker's first full collection writes the GC header of each of them, copying
    every page they live on: ~200 MB more private memory per worker, mid-epoch (`scripts/bench_data.py`)."""
    import gc

    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)
    gc.freeze()
