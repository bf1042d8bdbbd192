"""Value checks on a composed config that Hydra's composition cannot make (types, ranges, combinations)."""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cmvl.config.families import check_model_family
from cmvl.config.hardware import check_hardware
from cmvl.config.nonfinite import check_settings as check_nonfinite_settings
from cmvl.config.paths import choice_file, config_groups
from cmvl.config.rules import check_values
from cmvl.config.targets import SOURCE, check_targets, resolve_target, trusted_prefixes
from cmvl.errors import ConfigError


def _source_class(node: Any, trusted: tuple[str, ...]) -> type | None:
    """The Source class a dataset config names (its `_target_`, held to the allow-list), None if it names none."""
    target = node.get("_target_") if isinstance(node, DictConfig | dict) else None
    if target is None:
        return None
    try:
        return resolve_target("dataset", target, SOURCE, trusted)
    except ConfigError:
        return None


def _datasets_providing(kind: str, trusted: tuple[str, ...]) -> list[str]:
    """The `dataset=` choices (cmvl's and the user's config folder's) whose Source class provides `kind` tables."""
    names = []
    for name in config_groups().get("dataset", []):
        path = choice_file("dataset", name)
        source = _source_class(OmegaConf.load(path), trusted) if path is not None else None
        if source is not None and kind in source.kinds:
            names.append(name)
    return names


def validate_config(cfg: DictConfig, *, check_task: bool = True, check_devices: bool = False) -> None:
    """Every check a composed config (or a checkpoint's, with overrides) must pass before work starts;
    `check_devices`: also `trainer.devices` against this machine (training; evaluation uses one device)."""
    missing = _first_missing_key(cfg)
    if missing:
        raise ConfigError(f"{missing} is required: set it on the command line ({missing}=...)")
    check_targets(cfg)
    check_values(cfg)
    check_hardware(cfg, check_devices=check_devices)
    guard = cfg.get("nonfinite_loss") or {}
    check_nonfinite_settings(guard.get("action", "stop"), guard.get("max_skips", 10))
    _check_resume(cfg)
    if check_task:
        check_model_family(cfg)  # model= runs task=
    # What the dataset offers (its splits, its annotation tables) is stated once, by its Source class.
    trusted = trusted_prefixes(cfg)
    source = _source_class(cfg.dataset, trusted)
    if source is None:
        return
    _check_source_settings(cfg.dataset, source)
    splits = source.splits_for(OmegaConf.to_container(cfg.dataset, resolve=True))
    if splits is not None and cfg.dataset.split not in splits:
        raise ConfigError(f"dataset.split={cfg.dataset.split}: must be one of {', '.join(splits)}")
    for node in _task_nodes(cfg) if check_task else []:
        needs = _task_needs(node)
        if needs and needs not in source.kinds:
            raise ConfigError(
                f"task={_task_name(node)} needs '{needs}' annotations, which dataset={source.name} does not "
                f"provide; datasets that do: {', '.join(_datasets_providing(needs, trusted)) or 'none'}"
            )


def _check_source_settings(node: DictConfig, source: type) -> None:
    """Every key of `dataset` is an argument of its Source class: a key another dataset takes (a recipe's
    `dataset.split_scheme` after `dataset=shapes`) would otherwise fail inside Hydra's instantiate, as a traceback."""
    parameters = inspect.signature(source.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = next((str(k) for k in node if not str(k).startswith("_") and str(k) not in parameters), None)
    if unknown is not None:
        takes = sorted(k for k in parameters if k != "self")
        raise ConfigError(
            f"dataset.{unknown}: dataset={source.name} has no such setting (it takes: {', '.join(takes)})"
        )


def _keys(node, prefix: str = ""):
    """(path, parent node, key) of every key in the config except `hydra`, without resolving interpolations (some
    need Hydra's runtime config); interpolated nodes are not entered."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        if prefix == "" and key == "hydra":
            continue
        path = f"{prefix}{key}" if isinstance(key, str) else f"{prefix.rstrip('.')}[{key}]"
        yield path, node, key
        if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig | ListConfig):
            yield from _keys(child, path + ".")


def _first_missing_key(cfg: DictConfig) -> str | None:
    """The first `???` value."""
    return next((path for path, node, key in _keys(cfg) if OmegaConf.is_missing(node, key)), None)


def _check_resume(cfg: DictConfig) -> None:
    resume = str(cfg.resume)
    if resume not in ("None", "never", "auto") and not resume.endswith(".ckpt"):
        raise ConfigError(f"resume={resume}: must be never, auto or the path of a .ckpt file")


def _task_nodes(cfg: DictConfig) -> list[DictConfig]:
    """The task's config, or each member's config for a multitask (`task.tasks`)."""
    tasks = cfg.task.get("tasks")
    return list(tasks.values()) if isinstance(tasks, DictConfig) else [cfg.task]


def _task_class(node: DictConfig):
    from hydra.utils import get_class

    try:
        return get_class(node._target_)
    except Exception:  # noqa: BLE001 - an unimportable target is reported when it is instantiated
        return None


def _task_name(node: DictConfig) -> str:
    task_class = _task_class(node)
    return task_class.name if task_class is not None else _choice(node)


def _choice(node: DictConfig) -> str:
    return str(node.get("_target_", "?")).rsplit(".", 1)[-1]


def _task_needs(node: DictConfig) -> str | None:
    task_class = _task_class(node)
    return getattr(task_class, "table_kind", None)
