"""The model family a config chooses (`model=`, cmvl/conf/model/), and whether it runs the config's task."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from cmvl.config.targets import MODEL_FAMILY, TASK, resolve_target, trusted_prefixes
from cmvl.errors import ConfigError

if TYPE_CHECKING:
    from cmvl.models.families.base import ModelFamily


def model_family(cfg: DictConfig) -> type[ModelFamily]:
    """The model family class `model._target_` names, held to the allow-list like every `_target_`."""
    model = cfg.get("model")
    target = model.get("_target_") if isinstance(model, DictConfig) else None
    if target is None:
        raise ConfigError("model._target_ is missing: choose a model family (model=vl_fusion)")
    return resolve_target("model", target, MODEL_FAMILY, trusted_prefixes(cfg))


def check_model_family(cfg: DictConfig) -> None:
    """Refuse, in one line, a model family that does not run the task (or one of a multitask's members)."""
    from cmvl.tasks.base import family_problem

    family = model_family(cfg)
    members = cfg.task.get("tasks")
    nodes = members.items() if isinstance(members, DictConfig) else [(None, cfg.task)]
    for name, node in nodes:
        place = "task" if name is None else f"task.tasks.{name}"
        task = resolve_target(place, node.get("_target_"), TASK, trusted_prefixes(cfg))
        problem = family_problem(task, family)
        if problem:
            raise ConfigError(problem)
