"""Validate command-line overrides before anything heavy runs: one clear line per mistake.

Hydra's own composition errors are multi-line and exit 1; here every user mistake becomes a `ConfigError`
(exit 2) naming the key and, for config groups, the valid choices. Sweeps (`-m a=1,2`) are checked value by
value.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import GrammarParseError, OmegaConfBaseException

from cmvl.config.callbacks import callback_nodes, check_callbacks
from cmvl.config.compose import compose_config
from cmvl.config.locations import cache_directory, check_hub_names, run_directories
from cmvl.config.overrides import hydra_overrides, user_overrides
from cmvl.config.paths import CONF_DIR, config_groups
from cmvl.config.targets import TRUST_KEY, check_targets, trusted_prefixes
from cmvl.config.unreadable import unreadable_override
from cmvl.config.validate import validate_config
from cmvl.config.writable import check_writable_dir
from cmvl.errors import ConfigError
from cmvl.log import log


def _check_group_choices(key: str, values: list[str], groups: dict[str, list[str]]) -> None:
    """A group's choices exist (cmvl's or $CMVL_CONFIG_DIR's); a top-level key that is neither a group nor a key
    of cmvl's config is refused (Hydra would add `+experiment=x` as a key nobody reads, and train the defaults)."""
    # `+task@task.tasks.retrieval=retrieval`: a choice of group `task` placed at another package (a multitask member)
    group, _, package = key.lstrip("+~").partition("@")
    if group not in groups:
        top = group.split(".", 1)[0]
        if top not in groups and top not in _top_level_keys():
            value = values[0] if values else ""
            raise ConfigError(
                f"{key}={value}: '{top}' is neither a config group nor a key of cmvl's config (groups: "
                f"{', '.join(groups)}; see `cmvl train --help`)"
            )
        return
    if key.startswith("+") and not package and group in _default_groups():
        raise ConfigError(f"{key}={values[0]}: {group} is one of cmvl's config groups; choose without +: {group}=...")
    for value in values:
        for choice in value.strip("[]").split(","):
            choice = choice.strip()
            if choice and choice not in groups[group] and choice != "null":
                raise ConfigError(
                    f"{group}={choice}: unknown choice for '{group}' (choices: {', '.join(groups[group])})"
                )


@lru_cache(maxsize=1)
def _primary_config() -> DictConfig:
    return OmegaConf.load(CONF_DIR / "train.yaml")


def _top_level_keys() -> set[str]:
    """The keys of cmvl/conf/train.yaml (the groups' packages are the groups themselves)."""
    return {str(k) for k in _primary_config() if k != "defaults"}


def _default_groups() -> set[str]:
    """The groups train.yaml's defaults list chooses from (chosen with `group=x`; `+group=x` is for other groups)."""
    groups = set()
    for entry in _primary_config().get("defaults") or []:
        if isinstance(entry, DictConfig):
            groups.update(str(k).removeprefix("override ") for k in entry)
    return groups


def _compose(overrides: list[str], config_name: str) -> DictConfig:
    try:
        return compose_config(overrides, config_name=config_name, return_hydra_config=True)
    except ValueError as err:  # Hydra's own check of a group's choice: `logger=null` (`logger=none` is a choice)
        groups = config_groups()
        for line in overrides:
            key, _, value = line.partition("=")
            group = key.lstrip("+~")
            if group in groups and value == "null":
                if "none" in groups[group]:
                    raise ConfigError(f"{line}: to choose no {group}, use {group}=none") from None
                raise ConfigError(
                    f"{line}: null is not a choice; leave {group}= out for none, or choose one of "
                    f"{', '.join(groups[group])}"
                ) from None
        raise ConfigError(f"invalid override: {str(err).strip().splitlines()[0]}") from None
    except (HydraException, OmegaConfBaseException) as err:
        message = str(err).strip().splitlines()[0]
        if "not in struct mode" in str(err) or "Could not override" in message:
            key = message.split("'")[1] if "'" in message else message
            raise ConfigError(f"{key}: no such config key (add new keys with +{key}=...)") from None
        if _caused_by(err, GrammarParseError):
            raise ConfigError(unreadable_override(overrides)) from None
        raise ConfigError(f"invalid override: {message}") from None


def _caused_by(err: BaseException, kind: type[BaseException]) -> bool:
    while err is not None:
        if isinstance(err, kind):
            return True
        err = err.__cause__ or err.__context__
    return False


def preflight(
    overrides: list[str], *, config_name: str = "train", check_task: bool = True, training: bool = True
) -> None:
    """Raise `ConfigError` if any override (or any value of a sweep) is not a valid configuration; `training`: also
    the devices against this machine, the run directory, and that pretrained hub names can be loaded."""
    try:
        parsed = OverridesParser.create().parse_overrides(user_overrides(overrides))
        hydra_settings = OverridesParser.create().parse_overrides(hydra_overrides(overrides))
    except HydraException:
        raise ConfigError(unreadable_override(overrides)) from None
    _warn_of_keys_given_twice([*parsed, *hydra_settings])
    sweeping = any(o.is_sweep_override() for o in parsed)
    check = partial(_validate, config_name=config_name, check_task=check_task, training=training, sweeping=sweeping)
    base, variants = _split_sweeps(parsed)
    # Hydra's own settings are composed too, so that the classes they name (callbacks, sweeper) are checked.
    settings = [o.input_line for o in hydra_settings if not o.is_sweep_override()]
    base, variants = [*settings, *base], [*([] for _ in settings), *variants]
    search_space = check(base)
    if any(key.lstrip("+~") == TRUST_KEY for key in search_space):
        raise ConfigError(
            f"hydra.sweeper.params.{TRUST_KEY}: a search space may not choose which packages are trusted; only the "
            f"command line may ({TRUST_KEY}=[your_package])"
        )
    # A search space (hparams_search) sweeps too: each of its values is tried against the command's overrides.
    space_base, space_variants = _split_sweeps(_parse_search_space(search_space))
    base, variants = [*space_base, *base], [*space_variants, *variants]
    if space_base:
        check(base)
    for i, alternatives in enumerate(variants):
        for alternative in alternatives:
            check(base[:i] + [alternative] + base[i + 1 :])


def _warn_of_keys_given_twice(parsed: list[Override]) -> None:
    """Hydra applies a key given twice in order, so the last value wins: scripts rely on that (`$BASE
    trainer.max_epochs=3`), but a pasted line that sets `model.dim=32 ... model.dim=64` would change a run without a
    word, so each repeated key gets a warning line naming the value that is used."""
    seen: dict[tuple[str, str | None], str] = {}
    for override in parsed:
        key = (override.key_or_group, override.package)
        if key in seen and seen[key] != override.input_line:
            log.warning(
                f"{override.key_or_group} is given twice ({seen[key]}, then {override.input_line}): the last one "
                "is used"
            )
        seen[key] = override.input_line


def _split_sweeps(parsed: list[Override]) -> tuple[list[str], list[list[str]]]:
    """Overrides with each sweep at its first value, and for each override the alternative values to try."""
    groups = config_groups()
    base: list[str] = []
    variants: list[list[str]] = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            values = _sweep_values(override)
            _check_group_choices(key, values, groups)
            base.append(f"{key}={values[0]}")
            variants.append([f"{key}={v}" for v in values[1:]])
        else:
            _check_group_choices(key, [override.get_value_element_as_str()], groups)
            base.append(override.input_line)
            variants.append([])
    return base, variants


def _sweep_values(override: Override) -> list[str]:
    """A choice or range sweep's values; an interval (Optuna's continuous range) is tried at both ends."""
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        return [str(sweep.start), str(sweep.end)]
    return list(override.sweep_string_iterator())


def _parse_search_space(params: dict[str, str]) -> list[Override]:
    lines = [f"{key}={value}" for key, value in params.items()]
    try:
        return OverridesParser.create().parse_overrides(lines)
    except HydraException as err:
        raise ConfigError(f"hydra.sweeper.params: {str(err).strip().splitlines()[0]}") from None


def _validate(
    overrides: list[str], *, config_name: str, check_task: bool, training: bool, sweeping: bool
) -> dict[str, str]:
    """Check one configuration; returns its search space (`hydra.sweeper.params`, empty without one)."""
    cfg = _compose(overrides, config_name)
    _check_trust_from_command_line(cfg, overrides)
    output_dirs = run_directories(cfg, sweeping=sweeping) if training else {}
    check_targets(cfg)  # Hydra's part included: it builds its callbacks, sweeper and launcher before the run starts
    OmegaConf.set_struct(cfg, False)
    hydra_cfg = cfg.pop("hydra", None)
    validate_config(cfg, check_task=check_task, check_devices=training)
    checkpoint_dir = _checkpoint_directory(cfg, output_dirs) if training else {}
    for setting, path in {**output_dirs, **checkpoint_dir, **cache_directory()}.items():
        check_writable_dir(path, setting)
    if training:
        for key in ("init_from", "distill.teacher"):  # checkpoints the run reads its weights from
            _check_source_checkpoint(cfg, key, {**output_dirs, **checkpoint_dir})
        check_hub_names(cfg)
        check_callbacks(cfg, _monitored_keys(cfg))
    if cfg.get("optimized_metric") is not None:
        _check_optimized_metric(cfg)
    params = OmegaConf.select(hydra_cfg, "sweeper.params", default=None) if hydra_cfg is not None else None
    return {str(k): str(v) for k, v in params.items()} if params else {}


def _check_trust_from_command_line(cfg: DictConfig, overrides: list[str]) -> None:
    """The packages the composed config trusts are the ones the command line names (or train.yaml's default, none):
    a config file (an `experiment=` recipe or any choice from $CMVL_CONFIG_DIR, `# @package _global_`) that sets
    `extra_target_prefixes` would make cmvl import packages the person running the command did not choose."""
    lines = [o for o in overrides if o.partition("=")[0].lstrip("+~") == TRUST_KEY]
    if lines:
        given = OverridesParser.create().parse_overrides(lines[-1:])[0]
        expected = trusted_prefixes({TRUST_KEY: None if given.is_delete() else given.value()})
    else:
        expected = trusted_prefixes(_primary_config())
    composed = trusted_prefixes(cfg)
    if composed != expected:
        raise ConfigError(
            f"{TRUST_KEY}=[{','.join(composed)}]: set by a config file this command chose, not on the command line; "
            f"trust comes only from the command line: remove it from the file, and write '{TRUST_KEY}=[...]' in the "
            "command yourself if you trust those packages"
        )


def _check_source_checkpoint(cfg: DictConfig, key: str, run_dirs: dict[str, str]) -> None:
    """`key` (`init_from`, `distill.teacher`) names a checkpoint file that is there, before the run directory is
    made (its content is checked when the run reads it), and outside the folders this run writes: `overwrite=true`
    would delete it before it is read, and a run continuing there is its own run, not one started from it."""
    init = OmegaConf.select(cfg, key, default=None)
    if init is None:
        return
    path = Path(str(init)).expanduser()
    if path.is_dir():
        raise ConfigError(f"{key}={init}: a folder, not a checkpoint file (e.g. its checkpoints/best.ckpt)")
    if not path.is_file():
        raise ConfigError(f"{key}={init}: checkpoint not found (no such file)")
    for setting, folder in run_dirs.items():
        if setting != "hydra.sweep.dir=" and path.resolve().is_relative_to(Path(folder).expanduser().resolve()):
            raise ConfigError(
                f"{key}={init}: inside this run's own folder ({setting}{folder}), which the run writes (and "
                "overwrite=true empties); copy the checkpoint elsewhere or choose another hydra.run.dir"
            )


def _checkpoint_directory(cfg: DictConfig, output_dirs: dict[str, str]) -> dict[str, str]:
    """checkpoint.dirpath= → its folder, with `paths.output_dir` (Hydra's runtime output dir, not known before the
    run) taken as the run directory probed above; empty where it cannot be known."""
    run_dirs = ("paths.output_dir=", "hydra.run.dir=", "hydra.sweep.dir=")
    run_dir = next((output_dirs[key] for key in run_dirs if key in output_dirs), None)
    probe = cfg.copy()
    paths = probe.get("paths")
    if run_dir is not None and isinstance(paths, DictConfig) and OmegaConf.is_interpolation(paths, "output_dir"):
        paths.output_dir = run_dir
    try:
        dirpath = OmegaConf.select(probe, "checkpoint.dirpath", default=None)
    except OmegaConfBaseException:
        return {}
    return {"checkpoint.dirpath=": str(dirpath)} if dirpath is not None else {}


def _monitored_keys(cfg: DictConfig) -> list[str] | None:
    """The task's validation metrics, where a callback names one to monitor (None: no callback does)."""
    if not any(node.get("monitor") is not None for node in callback_nodes(cfg).values()):
        return None
    from cmvl.config.instantiate import build_task

    return build_task(cfg).validation_keys()


def _check_optimized_metric(cfg: DictConfig) -> None:
    from cmvl.config.instantiate import build_task

    keys = build_task(cfg).validation_keys()
    if cfg.optimized_metric not in keys:
        raise ConfigError(f"optimized_metric={cfg.optimized_metric}: not a metric this task logs ({', '.join(keys)})")
