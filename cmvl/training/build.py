"""Config → objects. The one place where the config tree is turned into sources, tasks, models and trainers,
shared by `cmvl train` and `cmvl eval`."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerFast

from cmvl.config.families import model_family

# `instantiate` and `build_task` live in the config package (pre-flight builds the task too); imported from here by
# train.py, checkpoints.py and tests.
from cmvl.config.instantiate import build_task, instantiate
from cmvl.data.datamodule import VLDataModule
from cmvl.data.sources.base import Source
from cmvl.data.workers import resolve_num_workers
from cmvl.errors import ConfigError
from cmvl.models.families.base import ModelFamily, Recipe
from cmvl.tasks.base import Task, family_problem
from cmvl.training.adversarial import build_adversary
from cmvl.training.distillation import Distiller, DistillSettings, Teacher
from cmvl.training.lit_module import VLLitModule
from cmvl.training.nonfinite import NonFiniteGuard


def build_source(cfg: DictConfig) -> Source:
    """The dataset's Source: every key of `dataset` is an argument of its class (what it provides and its splits
    are the class's, stated once)."""
    return instantiate(cfg.dataset, _convert_="all")


def build_datamodule(
    cfg: DictConfig,
    *,
    task: Task | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None,
    tokenizer_builder: Any = None,
) -> VLDataModule:
    """The data module of `cfg`. `task` and `tokenizer`: a restored run's (`cmvl.run.restore_task`), used as they
    are (`prepare()` fits nothing); otherwise the task is built from the config and `prepare()` fits it on the
    training split and builds the tokenizer with `tokenizer_builder` (default: the one `text.tokenizer` names)."""
    data = cfg.data
    return VLDataModule(
        source=build_source(cfg),
        task=task if task is not None else build_task(cfg),
        tokenizer_builder=tokenizer_builder if tokenizer_builder is not None else instantiate(cfg.text.tokenizer),
        tokenizer=tokenizer,
        text_max_length=cfg.text.max_length,
        image=OmegaConf.to_container(data.image, resolve=True),
        batch_size=data.batch_size,
        group_by_image=data.group_by_image,
        max_rows_per_image=data.max_rows_per_image,
        seed=cfg.seed,
        eval_batch_size=data.eval_batch_size,
        num_workers=resolve_num_workers(
            data.num_workers, accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices
        ),
        pin_memory=data.pin_memory,
        max_bad_fraction=data.max_bad_fraction,
        image_cache_mb=data.image_cache_mb,
    )


def build_model(cfg: DictConfig, task: Task, tokenizer: PreTrainedTokenizerFast) -> ModelFamily:
    """The run's model from its config, its task (bound to `tokenizer`, with its learnt state) and its tokenizer:
    no dataset is read, so a run is rebuilt from a checkpoint alone. The family `model=` names builds the parts
    the task needs (and only those), then the task's heads."""
    family = model_family(cfg)
    for member in task.members():
        problem = family_problem(member, family)
        if problem:
            raise ConfigError(problem)
    recipe = Recipe(config=cfg, parts=task.parts, build=instantiate, heads=task.build_heads, tokenizer=tokenizer)
    model = family.from_recipe(recipe)
    # Hugging Face `from_pretrained` returns its model in eval mode and Lightning keeps the modes it finds: without
    # this, pretrained encoders and decoders would train with their dropout off.
    return model.train()


def build_lit_module(cfg: DictConfig, datamodule: VLDataModule, *, teacher: Teacher | None = None) -> VLLitModule:
    """The training module of `cfg`; `teacher`: the one `distill.teacher` names (`cmvl.distill.load_teacher`)."""
    run_state = {"config": OmegaConf.to_container(cfg, resolve=True), "data_state": datamodule.data_state()}
    optim = {
        "optimizer": instantiate(cfg.optim.optimizer),
        "weight_decay": cfg.optim.weight_decay,
        "scheduler": OmegaConf.to_container(cfg.optim.scheduler, resolve=True),
    }
    model = build_model(cfg, datamodule.task, datamodule.tokenizer)
    distill = cfg.get("distill") or {}
    return VLLitModule(
        model=model,
        task=datamodule.task,
        optim=optim,
        run_state=run_state,
        nonfinite=NonFiniteGuard(**OmegaConf.to_container(cfg.get("nonfinite_loss") or {}, resolve=True)),
        adversary=build_adversary(OmegaConf.to_container(cfg.get("adversarial") or {}, resolve=True), datamodule.task),
        ema_decay=(cfg.get("ema") or {}).get("decay"),
        distiller=Distiller(
            teacher,
            model,
            DistillSettings(distill.temperature, distill.alpha, distill.feature_weight),
        )
        if teacher is not None
        else None,
    )


def single_device_trainer(cfg: DictConfig, **kwargs: Any) -> pl.Trainer:
    """A `Trainer` on one device of the run's accelerator and precision, writing nothing (no logger, no
    checkpoints): for evaluation and measurements. `kwargs` add or replace `Trainer` arguments."""
    arguments = {
        "accelerator": cfg.trainer.accelerator,
        "devices": 1,
        "precision": cfg.trainer.precision,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**arguments, **kwargs})
