"""Validate command-line overrides before anything heavy runs: one clear line per mistake.

Hydra's own composition errors are multi-line and exit 1; here every user mistake becomes a `ConfigError`
(exit 2) naming the key and, for config groups, the valid choices. Sweeps (`-m a=1,2`) are checked value by
value.
"""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cmvl.config.compose import compose_config
from cmvl.config.paths import config_groups
from cmvl.config.validate import validate_config
from cmvl.errors import ConfigError


def _check_group_choices(key: str, values: list[str], groups: dict[str, list[str]]) -> None:
    group = key.lstrip("+~")
    if group not in groups:
        return
    for value in values:
        for choice in value.strip("[]").split(","):
            if choice and choice not in groups[group] and choice != "null":
                raise ConfigError(
                    f"{group}={choice}: unknown choice for '{group}' (choices: {', '.join(groups[group])})"
                )


def _compose(overrides: list[str], config_name: str) -> DictConfig:
    try:
        return compose_config(overrides, config_name=config_name, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        message = str(err).strip().splitlines()[0]
        if "not in struct mode" in str(err) or "Could not override" in message:
            key = message.split("'")[1] if "'" in message else message
            raise ConfigError(f"{key}: no such config key (add new keys with +{key}=...)") from None
        raise ConfigError(f"invalid override: {message}") from None


def preflight(overrides: list[str], *, config_name: str = "train", check_task: bool = True) -> None:
    """Raise `ConfigError` if any override (or any value of a sweep) is not a valid configuration."""
    user = [o for o in overrides if not o.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    try:
        parsed = OverridesParser.create().parse_overrides(user)
    except HydraException as err:
        raise ConfigError(f"invalid override: {str(err).strip().splitlines()[0]}") from None
    groups = config_groups()
    variants: list[list[str]] = []
    base = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            _check_group_choices(key, values, groups)
            base.append(f"{key}={values[0]}")
            variants.append([f"{key}={v}" for v in values[1:]])
        else:
            _check_group_choices(key, [override.get_value_element_as_str()], groups)
            base.append(override.input_line)
            variants.append([])
    _validate(base, config_name, check_task)
    for i, alternatives in enumerate(variants):
        for alternative in alternatives:
            _validate(base[:i] + [alternative] + base[i + 1 :], config_name, check_task)


def _validate(overrides: list[str], config_name: str, check_task: bool) -> None:
    cfg = _compose(overrides, config_name)
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra", None)
    validate_config(cfg, check_task=check_task)
