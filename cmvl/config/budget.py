"""The training budget: `trainer.max_epochs`, or, when it is null, the task's own default (`Task.epochs`).

Each task states its measured default budget once, in its class (README "Measured"); the trainer config leaves
`max_epochs` null to take it, and any number set there (a recipe, the command line) wins. The run's saved config
(config.yaml, the checkpoint) holds the number that was used.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cmvl.config.targets import TASK, resolve_target, trusted_prefixes
from cmvl.errors import ConfigError


def task_budget(cfg: DictConfig) -> int:
    """The default number of epochs of the task `cfg` names (its class's `epochs`)."""
    target = OmegaConf.select(cfg, "task._target_")
    task_class = resolve_target("task", target, TASK, trusted_prefixes(cfg))
    epochs = getattr(task_class, "epochs", None)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(
            f"trainer.max_epochs=null: the task {target} states no default budget (a positive integer class "
            "attribute `epochs`); set trainer.max_epochs=N"
        )
    return epochs


def fill_budget(cfg: DictConfig) -> None:
    """Set a null `trainer.max_epochs` to the task's default budget, in place."""
    if OmegaConf.select(cfg, "trainer.max_epochs") is None:
        cfg.trainer.max_epochs = task_budget(cfg)
