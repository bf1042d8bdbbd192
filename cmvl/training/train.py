"""`run_training(cfg)`: the body of `cmvl train` for one job (one run directory)."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.plugins.environments import SLURMEnvironment

from cmvl.atomic_file import write_json_atomic
from cmvl.config.budget import fill_budget
from cmvl.config.callbacks import callback_nodes, has_lr_monitor, monitor_arguments
from cmvl.errors import ConfigError, UserError
from cmvl.log import get_logger
from cmvl.models.lora import lora_summary
from cmvl.run_files import METRICS_CSV, SAMPLES_DIR, SUMMARY_FILE
from cmvl.sweeps.jobs import finished_summary, in_sweep, relaunch_ranks_as_single_run, resume_mode
from cmvl.training import slurm
from cmvl.training.build import build_datamodule, build_lit_module, instantiate
from cmvl.training.checkpoint_io import AtomicCheckpointIO
from cmvl.training.checkpoints import refuse_unrestorable
from cmvl.training.csv_logger import ResumableCSVLogger
from cmvl.training.curves import plot_curves
from cmvl.training.distillation import Teacher
from cmvl.training.final_validation import validate_unless_current
from cmvl.training.fsdp import pop_fsdp_settings
from cmvl.training.init_from import check_init_with_resume, load_initial_weights, read_initial_weights
from cmvl.training.init_from import tokenizer_builder as init_tokenizer_builder
from cmvl.training.lightning_compat import (
    checkpoint_path,
    monitor_candidates,
    save_last,
    save_to,
    save_top_k,
    skips_saving,
)
from cmvl.training.lit_module import CHECKPOINT_KEY
from cmvl.training.preemption import EXIT_PREEMPTED, STEP_CHECKPOINT, PreemptionCallback, PreemptionStop
from cmvl.training.progress_bars import progress_bar
from cmvl.training.restore import restore_task
from cmvl.training.resume import RNGStateCallback, find_resume_checkpoint
from cmvl.training.resume_settings import check_loop_settings
from cmvl.training.run_dir import claim_run_dir
from cmvl.training.samples import SamplePredictions
from cmvl.training.torchrun import check_torchrun_world

log = get_logger(__name__)


def build_loggers(cfg: DictConfig) -> list[pl.loggers.Logger]:
    """The loggers of `logger=` (any combination: `logger=[csv,tensorboard,wandb]`). The jobs of one sweep share a
    wandb group (the sweep directory's name) unless the config names one."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        extra = {}
        if str(node.get("_target_", "")).endswith("WandbLogger") and node.get("group") is None and in_sweep():
            from hydra.core.hydra_config import HydraConfig

            extra["group"] = Path(HydraConfig.get().sweep.dir).name
        loggers.append(instantiate(node, **extra))
    return loggers


def record_final_metrics(loggers: list[pl.loggers.Logger], summary: dict[str, Any]) -> None:
    """The run's best validation metrics where a logger keeps per-run results: the wandb run summary, and
    TensorBoard's hparams table (runs side by side with their settings)."""
    best = {k: v for k, v in (summary.get("best_epoch_metrics") or {}).items() if k not in ("epoch", "step")}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update({f"best/{k}": v for k, v in best.items()})
        elif isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams({}, metrics={f"best/{k}": v for k, v in best.items()})


def build_callbacks(cfg: DictConfig, monitor: str, mode: str, has_logger: bool) -> list[pl.Callback]:
    ck = cfg.checkpoint
    callbacks: list[pl.Callback] = [
        # User callbacks first: a signal one of them raises in a step is seen by PreemptionCallback in that step.
        # `monitor: null` / `mode: null` (callbacks=early_stopping): the task's checkpoint metric and its mode.
        *(instantiate(node, **monitor_arguments(node, monitor, mode)) for node in callback_nodes(cfg).values()),
        # Fixed file names (no metric in the name: metric keys contain '/'), overwritten in place.
        ModelCheckpoint(
            dirpath=ck.dirpath,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        StepCheckpoint(
            dirpath=ck.dirpath, keep_last=ck.keep_last, every_n_steps=ck.every_n_steps, save_last=ck.save_last
        ),
        RNGStateCallback(),
        PreemptionCallback(ck.dirpath),
        SamplePredictions(Path(cfg.paths.output_dir) / SAMPLES_DIR, **cfg.samples),
    ]
    if has_logger and not has_lr_monitor(cfg):  # callbacks=lr_monitor: the user's settings instead
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(progress_bar(terminal=sys.stderr.isatty()))  # its total stops at trainer.max_steps
    return callbacks


class StepCheckpoint(ModelCheckpoint):
    """The newest `keep_last` step<N>.ckpt by global step, every `every_n_steps` steps (or every epoch), and
    last.ckpt written with each of them and once more at the end of fit, so last.ckpt is always the newest state.
    At the end of fit it first validates the final weights when no validation covered them (`final_validation`).

    (last.ckpt cannot hang off the best-metric checkpoint: Lightning writes `last` only in a step where its owner
    saved, so a run whose metric stopped improving would leave a stale last.ckpt.)
    """

    def __init__(self, *, dirpath: str, keep_last: int, every_n_steps: int | None, save_last: bool) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=STEP_CHECKPOINT,
            monitor="step",
            mode="max",
            save_top_k=keep_last,
            every_n_train_steps=every_n_steps,
            save_last=save_last,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        validated = validate_unless_current(trainer)
        if validated:  # the best checkpoint too, as after an epoch's validation (its owner saves at epoch ends only)
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint) and not isinstance(callback, StepCheckpoint):
                    save_top_k(callback, trainer, monitor_candidates(callback, trainer))
        if validated or not skips_saving(self, trainer):
            candidates = monitor_candidates(self, trainer)
            step_file = checkpoint_path(self, trainer, candidates)
            if step_file in self.best_k_models:  # written at this step before the final validation: rewritten
                save_to(self, trainer, step_file)
            else:
                save_top_k(self, trainer, candidates)
            save_last(self, trainer, candidates)


def trainer_arguments(cfg: DictConfig) -> tuple[dict[str, Any], bool]:
    """The Trainer's keyword arguments from `cfg.trainer`, less cmvl's own settings: `requeue` (returned beside them)
    and `fsdp` (strategy=fsdp becomes the block-sharded strategy that section describes)."""
    arguments = OmegaConf.to_container(cfg.trainer, resolve=True)
    requeue = bool(arguments.pop("requeue", False))
    pop_fsdp_settings(arguments)
    return arguments, requeue


def run_training(cfg: DictConfig, *, load_teacher: Callable[..., Teacher] | None = None) -> dict[str, Any]:
    """One training job. `load_teacher(cfg, task, tokenizer)`: the teacher of `distill.teacher`
    (`cmvl.distill.load_teacher`, which the training package does not import: it restores runs with `cmvl.run`)."""
    fill_budget(cfg)  # trainer.max_epochs=null: the task's default budget, saved as a number with the run
    _run_dir_lock = claim_run_dir(cfg)  # held while this run lasts; refuses a clash before anything is written
    out_dir = Path(cfg.paths.output_dir)
    finished = finished_summary(out_dir, SUMMARY_FILE)
    if finished is not None:
        log.info(f"{out_dir} finished in an earlier run of this sweep; not run again")
        return finished
    log.info(f"run directory {out_dir}")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    resume = resume_mode(cfg.resume)
    ckpt_path, checkpoint = _resume_checkpoint(cfg, resume, asked=cfg.resume is not None)
    check_init_with_resume(cfg, ckpt_path, checkpoint)
    initial = read_initial_weights(cfg.init_from) if cfg.init_from and not checkpoint else None
    if checkpoint:  # a resumed run keeps the tokenizer and task state it started with (the checkpoint's)
        task, tokenizer = restore_task(cfg, checkpoint, ckpt_path)
        datamodule = build_datamodule(cfg, task=task, tokenizer=tokenizer)
    else:
        datamodule = build_datamodule(cfg, tokenizer_builder=init_tokenizer_builder(cfg, initial) if initial else None)
    datamodule.prepare()
    teacher = _teacher(cfg, datamodule, load_teacher)
    lit = build_lit_module(cfg, datamodule, teacher=teacher)
    for line in lora_summary(lit.model):  # text.lora / vision.lora / task.lm_lora: what trains
        log.info(line)
    if initial:
        load_initial_weights(lit.model, initial)
    loggers = build_loggers(cfg)
    if checkpoint:
        for logger in loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.resume_from(int(checkpoint["global_step"]))
    trainer_args, requeue_on_stop = trainer_arguments(cfg)
    check_torchrun_world(trainer_args.get("devices"), trainer_args.get("num_nodes", 1))
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # cmvl saves and requeues on SLURM's signal (trainer.requeue), never Lightning
        plugins.append(SLURMEnvironment(auto_requeue=False))
    if len(lit.task.members()) > 1 and trainer_args.get("strategy") == "ddp":
        # Each multitask step trains one task's head; DDP must not wait for the other heads' gradients (every
        # rank draws the same task at each step, so the ranks agree on which parameters are unused).
        trainer_args["strategy"] = "ddp_find_unused_parameters_true"
    trainer = pl.Trainer(
        **trainer_args,
        logger=loggers or False,
        callbacks=build_callbacks(cfg, lit.monitor, lit.task.monitor_mode, bool(loggers)),
        plugins=plugins,
        default_root_dir=str(out_dir),
    )
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if in_sweep() and trainer.world_size > 1:
        relaunch_ranks_as_single_run(out_dir, resume, find_spec("cmvl.cli.train_job").origin)
    if ckpt_path:
        refuse_unrestorable(trainer, ckpt_path)
    started = time.perf_counter()
    try:
        trainer.fit(lit, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except PreemptionStop as stop:
        if requeue_on_stop and trainer.is_global_zero:
            _requeue(out_dir)
        raise Preempted(stop.step, stop.path) from None
    if requeue_on_stop and trainer.is_global_zero:
        slurm.forget_note()
    summary = _summary(trainer, lit, time.perf_counter() - started, cfg.data.batch_size)
    summary.update(_optimized(summary, cfg.optimized_metric or lit.monitor, lit.task.monitor_mode))
    record_final_metrics(loggers, summary)
    if trainer.is_global_zero:
        write_json_atomic(out_dir / SUMMARY_FILE, summary)
        _print_summary(summary)
        _plot_curves(out_dir)
    return summary


def _teacher(cfg: DictConfig, datamodule: Any, load_teacher: Callable[..., Teacher] | None) -> Teacher | None:
    if not (cfg.get("distill") or {}).get("teacher"):
        return None
    if load_teacher is None:
        raise ConfigError("distill.teacher: the teacher is loaded by cmvl train (cmvl.distill.load_teacher)")
    return load_teacher(cfg, datamodule.task, datamodule.tokenizer)


def _requeue(out_dir: Path) -> None:
    if in_sweep():
        log.warning("trainer.requeue requeues single runs; re-run the sweep command to continue it")
        return
    from hydra.core.hydra_config import HydraConfig

    log.info(slurm.requeue(out_dir, list(HydraConfig.get().overrides.task)))


def _optimized(summary: dict[str, Any], metric: str, mode: str) -> dict[str, Any]:
    """The value a sweep job returns (`optimized_metric` at the best checkpoint's epoch) and its direction."""
    value = (summary.get("best_epoch_metrics") or {}).get(metric)
    return {"optimized_metric": metric, "optimized_value": value, "mode": mode}


def _resume_checkpoint(cfg: DictConfig, resume: str, *, asked: bool) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume (path, contents), saying which, after checking that it was trained with this run's
    loop-defining settings; `asked`: the user set `resume` (a sweep job that resumes by default starts fresh
    without a word)."""
    checkpoint_dir = Path(cfg.checkpoint.dirpath)
    ckpt_path, checkpoint, skipped = find_resume_checkpoint(resume, checkpoint_dir)
    if checkpoint is not None:  # before anything is built from it: every process refuses alike, none proceeds
        check_loop_settings(OmegaConf.to_container(cfg, resolve=True), checkpoint[CHECKPOINT_KEY]["config"], ckpt_path)
    for line in skipped:  # (cmvl's log speaks on global rank 0 only)
        log.warning(line)
    if checkpoint is not None:
        log.info(f"resuming from {ckpt_path} (global step {int(checkpoint.get('global_step', -1))})")
    elif resume == "auto" and asked:
        log.info(f"no checkpoint to resume in {checkpoint_dir}; starting fresh")
    return ckpt_path, checkpoint


class Preempted(UserError):
    """The run saved a checkpoint at a step boundary on SIGTERM/SIGUSR1 and stopped; `resume=auto` continues it."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, path: Path) -> None:
        super().__init__(f"preempted: saved step {step} to {path}; continue with resume=auto and the same run dir")


def _summary(trainer: pl.Trainer, lit, seconds: float, batch_size: int) -> dict[str, Any]:
    ckpt: ModelCheckpoint = trainer.checkpoint_callback
    best_score = float(ckpt.best_model_score) if ckpt.best_model_score is not None else None
    best_epoch = max(lit.val_history, key=lambda h: h[lit.monitor], default=None) if lit.val_history else None
    return {
        "monitor": lit.monitor,
        "best_score": best_score,
        "best_checkpoint": ckpt.best_model_path or None,
        "last_checkpoint": next((c.last_model_path for c in trainer.callbacks if isinstance(c, StepCheckpoint)), None)
        or None,
        "best_epoch_metrics": best_epoch,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train_seconds": round(seconds, 1),
        # Wall-clock throughput of this process's fit (validation included), all ranks together.
        "train_samples_per_second": round(
            trainer.global_step * batch_size * trainer.world_size / max(seconds, 1e-9), 1
        ),
        "parameters": sum(p.numel() for p in lit.model.parameters() if p.requires_grad),
    }


def _plot_curves(out_dir: Path) -> None:
    if (out_dir / METRICS_CSV).is_file():
        try:
            print(f"curves: {plot_curves(out_dir)}")
        except UserError:  # nothing logged yet (e.g. a run stopped in its first steps)
            pass


def _print_summary(summary: dict[str, Any]) -> None:
    score = summary["best_score"]
    print(f"best {summary['monitor']} = {score:.6f}" if score is not None else "no validation score was logged")
    metrics = summary.get("best_epoch_metrics") or {}
    for key, value in metrics.items():
        if key not in ("epoch", "step", summary["monitor"]):
            print(f"  {key} = {value:.6f}")
    if summary["best_checkpoint"]:
        print(f"best checkpoint: {summary['best_checkpoint']}")
    if summary["last_checkpoint"]:
        print(f"last checkpoint: {summary['last_checkpoint']}")
    evaluated = summary["best_checkpoint"] or summary["last_checkpoint"]  # last: when no validation ran
    if evaluated:
        print(f"evaluate with: cmvl eval ckpt={shlex.quote(str(evaluated))}")
