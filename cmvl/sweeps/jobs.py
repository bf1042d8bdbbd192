"""What a training job does differently inside a sweep: skip itself when already finished, resume when not, and
start its own DDP ranks as a single run of its own configuration."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import read_write

from cmvl.log import get_logger

log = get_logger(__name__)


def in_sweep() -> bool:
    """True inside a Hydra multirun job (a grid, Optuna or submitit sweep); False for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resume_mode(resume: Any) -> str:
    """`resume` as the run uses it: null means never for a single run and auto for a sweep job."""
    if resume is None:
        return "auto" if in_sweep() else "never"
    return str(resume)


def finished_summary(run_dir: Path, summary_file: str) -> dict[str, Any] | None:
    """The summary a sweep job left when it finished, or None (not run, failed or interrupted: run it)."""
    path = run_dir / summary_file
    if not in_sweep() or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # an unreadable summary is no proof the job finished


def relaunch_ranks_as_single_run(run_dir: Path, resume: str, job_file: str) -> None:
    """Make Lightning start DDP ranks > 0 as a single run of this job, in this job's directory.

    Lightning re-runs `sys.argv` plus `hydra.run.dir=<HydraConfig run.dir>` for each rank. Inside a sweep that
    would be the whole sweep command (every rank starting a sweep of its own) and a `run.dir` that is not the
    job's. Here argv becomes this job's overrides in run mode, and run.dir this job's directory; the ranks resume
    what rank 0 resumes.
    """
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if not o.lstrip("+~").startswith(("resume=", "hparams_search="))]
    sys.argv = [job_file, *overrides, "hydra.mode=RUN", f"resume={resume}"]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = str(run_dir)


def sweeper_value(summary: dict[str, Any], run_dir: Path) -> float | None:
    """What a job returns to the sweeper: its optimised metric. A sweep job that logged none (e.g. a run shorter
    than one epoch) is reported failed in one line and returns the worst value of its direction, so that Optuna
    records it as the worst trial and goes on with the others (None would end the whole search with a traceback)."""
    value = summary.get("optimized_value")
    if value is not None or not in_sweep():
        return value
    metric = summary.get("optimized_metric") or summary.get("monitor")
    log.error(
        f"job {run_dir.name} failed: it logged no {metric} (no validation ran; give it at least one "
        "epoch, or trainer.val_check_interval within the run); the sweep goes on without it"
    )
    return -math.inf if summary.get("mode", "max") == "max" else math.inf
