"""Requeue on SLURM (`trainer.requeue=true`, set by `trainer=slurm`).

When a preemption signal stops a run (it has saved a step checkpoint), global rank 0 writes a continuation note
`.cmvl/slurm/<job id>.json` in the working directory (the run directory and the command's overrides) and asks SLURM
to requeue the job (`scontrol requeue <job id>`). The requeued job runs the same batch script, so the same
`cmvl train` command starts again with the same job id: `continuation_overrides` finds the note and, when the
overrides are the same, points the run at the old run directory with `resume=auto`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from cmvl.atomic_file import write_json_atomic
from cmvl.log import get_logger

NOTES_DIR = Path(".cmvl") / "slurm"
log = get_logger(__name__)


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` for an array task, else SLURM_JOB_ID."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def _note(job: str) -> Path:
    return Path.cwd() / NOTES_DIR / f"{job}.json"


def requeue(run_dir: Path, overrides: list[str]) -> str:
    """Leaves the continuation note, then requeues this SLURM job; returns what happened, as one line."""
    job = slurm_job_id()
    if job is None:
        return "trainer.requeue: not inside a SLURM job (no SLURM_JOB_ID), so not requeued"
    write_json_atomic(_note(job), {"run_dir": str(run_dir), "overrides": list(overrides)})
    try:
        subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        return f"trainer.requeue: scontrol not found, SLURM job {job} not requeued"
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        reason = (getattr(err, "stderr", "") or str(err)).strip().splitlines()
        return f"scontrol requeue {job} failed ({reason[-1] if reason else 'no message'})"
    return f"requeued SLURM job {job}: it continues {run_dir} from this checkpoint"


def continuation_overrides(overrides: list[str]) -> list[str]:
    """Overrides that continue a requeued job's run (its run directory, `resume=auto`), or none."""
    job = slurm_job_id()
    note = _note(job) if job else None
    if note is None or not note.is_file():
        return []
    try:
        state = json.loads(note.read_text())
    except (OSError, ValueError):
        return []
    if state.get("overrides") != list(overrides):  # another command in the same job: a run of its own
        return []
    log.info(f"SLURM job {job} was requeued: continuing {state['run_dir']}")
    return [f"hydra.run.dir='{state['run_dir']}'", "resume=auto"]


def forget_note() -> None:
    """The run finished: its continuation note (if any) is spent."""
    job = slurm_job_id()
    if job:
        _note(job).unlink(missing_ok=True)
