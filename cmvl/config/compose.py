"""Composing the config tree outside a Hydra main (pre-flight checks, evaluation tools, scripts)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cmvl.config.paths import CONF_DIR, register_config_searchpath
from cmvl.config.resolvers import register_resolvers


def compose_config(
    overrides: list[str], *, config_name: str = "train", return_hydra_config: bool = False
) -> DictConfig:
    register_resolvers()
    register_config_searchpath()  # $CMVL_CONFIG_DIR's choices (hydra.searchpath in train.yaml)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)
