"""Hydra's `instantiate` after cmvl's trust check, and the task a config names.

Pre-flight (`cmvl.config.preflight`) builds the task to check `optimized_metric` against the keys it logs, and
`cmvl.training.build` builds everything else with the same `instantiate`: both live here, so the config package
does not import the training package (which imports this one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from cmvl.config.targets import check_targets, trusted_prefixes
from cmvl.errors import UserError

if TYPE_CHECKING:
    from cmvl.tasks.base import Task


def instantiate(node: Any, *, origin: DictConfig | None = None, **kwargs: Any) -> Any:
    """Hydra's `instantiate` of a config node (or of a plain container made from the node `origin`), after checking
    again, on the resolved node, that its place in the config may build what it names (`check_targets`, also run
    before anything starts). A user error raised by the target (a missing folder, an unknown model name) surfaces
    as itself, the one-line message, not wrapped in Hydra's exception with a traceback."""
    place = node if origin is None else origin
    resolved = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    check_targets(resolved, at=place._get_full_key(None), trusted=trusted_prefixes(place._get_root()))
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def build_task(cfg: DictConfig) -> Task:
    """The task: every key of `task` is an argument of its class (its default budget is the class's `epochs`)."""
    return instantiate(cfg.task, _convert_="all")
