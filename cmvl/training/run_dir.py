"""One run directory, one run: `claim_run_dir` is the first thing a training run does.

- A run dir that is the current folder (or one above it: `hydra.run.dir=` empty, `.`, `..`) is refused: the run would
  write over the files there.
- Global rank 0 holds an exclusive `flock` on `<run dir>/.cmvl/lock` for the whole run. The kernel releases it when
  the process ends, however it ends (SIGKILL included), so no lock outlives its run. A second `cmvl train` in the
  same directory gets one line and exit 2. Only global rank 0 writes into the run dir (checkpoints, logs, summary
  are rank-zero work), so it is the one process that needs the lock; the other DDP processes of the run (started
  by Lightning, torchrun or srun, every one marked by a nonzero rank variable) neither take nor test it.
- Temporary files in the run dir (and checkpoint dir) whose writer died (a killed save) are removed.
- A run dir inside a folder that holds another run's checkpoints is refused.
- A directory that holds an earlier run (checkpoints, config.yaml, hparams.yaml or logs) is refused unless the run
  continues it (`resume=auto` or `resume=PATH`, as a sweep job and a requeued SLURM job do) or `overwrite=true`
  removes that run's files first.

For a single run `ClaimRunDirCallback` claims the directory before Hydra writes `.hydra/` and its log into it, so a
refused run leaves every file as it was; `run_training` then takes that claim over. A sweep job claims its own
directory when its `run_training` starts.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
from pathlib import Path
from typing import IO, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from cmvl.atomic_file import remove_stale_temps
from cmvl.errors import ConfigError, UserError, one_line
from cmvl.log import get_logger
from cmvl.run_files import CURVES_PNG, METRICS_CSV, SAMPLES_DIR, SUMMARY_FILE
from cmvl.sweeps.jobs import resume_mode

log = get_logger(__name__)
LOCK_FILE = Path(".cmvl") / "lock"
RESOLVED_CONFIG = "config.yaml"  # the run's resolved config, written when training starts
HPARAMS_FILE = ExperimentWriter.NAME_HPARAMS_FILE  # the CSV logger's copy of the config, written with it
# What a run leaves beside its checkpoints, the files it writes first included (a run that died before its first
# checkpoint, or a user's own file of that name, is not written over): cmvl/conf/logger/*.yaml write under the
# tensorboard/ and wandb/ folders.
RUN_LOGS = (RESOLVED_CONFIG, HPARAMS_FILE, SUMMARY_FILE, METRICS_CSV, CURVES_PNG, SAMPLES_DIR, "tensorboard", "wandb")
CHECKPOINT_NAME = re.compile(r"^(best|last|step\d+)\.ckpt$")  # the files train.py's checkpoint callbacks write
# Set (nonzero) in every process of a run but the first by the launchers cmvl runs under: Lightning's DDP launcher
# (LOCAL_RANK, NODE_RANK), torchrun (RANK, LOCAL_RANK), SLURM srun (SLURM_PROCID), LSF jsrun (JSM_NAMESPACE_RANK).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")

_early_claims: dict[Path, RunDirLock] = {}  # made by ClaimRunDirCallback, taken over by run_training


class RunDirLock:
    """The exclusive lock of one run directory, held while this object lives (or until `release`)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self.release()
            raise UserError(
                f"{run_dir} is in use by another cmvl train (process {holder}); wait for it to end or choose "
                "another hydra.run.dir"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}@{os.uname().nodename}\n")  # who holds it, for the message above
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None


def claim_run_dir(cfg: DictConfig) -> RunDirLock | None:
    """Claim `cfg.paths.output_dir` for this run (see the module docstring); keep the result for as long as the run
    lasts. None in the processes of a run other than its first (they run under its lock)."""
    if not _is_first_process():
        return None
    run_dir = Path(cfg.paths.output_dir).resolve()
    early = _early_claims.pop(run_dir, None)
    return early if early is not None else _claim(run_dir, cfg)


class ClaimRunDirCallback(Callback):
    """Claims a single run's directory before Hydra writes into it (cmvl/conf/train.yaml's hydra.callbacks)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_first_process():
            return
        output_dir = os.path.abspath(str(config.hydra.run.dir))
        # The config reaches the run dir through ${hydra:runtime.output_dir}, which Hydra sets when the job starts;
        # set it now, to the value Hydra will set, so checkpoint.dirpath resolves as the run will see it.
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = output_dir
        HydraConfig.instance().set_config(config)
        run_dir = Path(OmegaConf.select(config, "paths.output_dir")).resolve()  # hydra.run.dir unless set apart
        stale = _early_claims.pop(run_dir, None)  # an earlier run in this process that stopped before training
        if stale is not None:
            stale.release()
        try:
            _refuse_current_folder(Path(output_dir).resolve())  # where Hydra writes .hydra/ and its log
            _early_claims[run_dir] = _claim(run_dir, config)
        except UserError as err:  # Hydra would print a stack of its own around an error raised here
            log.error(one_line(err))
            sys.exit(err.exit_code)


def _claim(run_dir: Path, cfg: DictConfig) -> RunDirLock:
    _refuse_current_folder(run_dir)
    _refuse_inside_checkpoints(run_dir)
    overwrite = bool(cfg.get("overwrite", False))
    if overwrite and cfg.get("resume") not in (None, "never"):
        raise ConfigError(
            f"overwrite=true removes the earlier run that resume={cfg.resume} would continue; drop one of the two"
        )
    checkpoint_dir = Path(OmegaConf.select(cfg, "checkpoint.dirpath")).resolve()
    lock = RunDirLock(run_dir)
    for folder in dict.fromkeys([run_dir, checkpoint_dir]):  # the checkpoint dir may lie outside the run dir
        if folder.is_dir():
            remove_stale_temps(folder, recursive=True)
    earlier = _earlier_run_files(run_dir, checkpoint_dir)
    if earlier and overwrite:
        for path in earlier:
            _remove(path)
        log.warning(f"overwrite=true: removed the earlier run's checkpoints and logs in {run_dir}")
    elif earlier and resume_mode(cfg.get("resume")) == "never":
        lock.release()
        names = ", ".join(_shown(path, run_dir) for path in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        raise UserError(
            f"{run_dir} holds an earlier run ({names}); continue it with resume=auto, replace it with overwrite=true, "
            "or choose a new hydra.run.dir"
        )
    return lock


def _refuse_current_folder(run_dir: Path) -> None:
    cwd = Path.cwd().resolve()
    if run_dir == cwd or run_dir in cwd.parents:
        raise UserError(
            f"hydra.run.dir is {run_dir}, the current folder or one above it: the run would write over the files "
            "there; give it a folder of its own (e.g. hydra.run.dir=outputs/my-run) or leave hydra.run.dir out"
        )


def _refuse_inside_checkpoints(run_dir: Path) -> None:
    """A run dir inside a folder of another run's checkpoints: that run's resume, checkpoint pruning and overwrite
    work on the folder, and this run's files would pass for its own."""
    for folder in run_dir.parents:
        checkpoint = next((p for p in _checkpoints(folder) if p.is_file()), None)
        if checkpoint is not None:
            raise UserError(
                f"hydra.run.dir {run_dir} lies inside {folder}, which holds another run's checkpoints "
                f"({checkpoint.name}); choose a hydra.run.dir outside that folder"
            )


def _checkpoints(folder: Path) -> list[Path]:
    """The checkpoint files train.py's checkpoint callbacks wrote in `folder`."""
    return sorted(p for p in folder.glob("*.ckpt") if CHECKPOINT_NAME.match(p.name))


def _earlier_run_files(run_dir: Path, checkpoint_dir: Path) -> list[Path]:
    """The checkpoints, config and logs an earlier run left (the lock, .hydra/ and files cmvl does not write do not
    count)."""
    return [*_checkpoints(checkpoint_dir), *(run_dir / name for name in RUN_LOGS if (run_dir / name).exists())]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _shown(path: Path, run_dir: Path) -> str:
    return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)


def _is_first_process() -> bool:
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)
