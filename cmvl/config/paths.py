"""Where the config tree lives: `cmvl/conf/`, inside the package (so a built wheel carries it), and the user's own
config folder, `$CMVL_CONFIG_DIR`, which adds choices to its groups.

The user folder has the same layout (`$CMVL_CONFIG_DIR/fusion/my_fusion.yaml` is `fusion=my_fusion`; a new folder
is a new group, chosen with `+group=choice`). Hydra finds it through `hydra.searchpath` (cmvl/conf/train.yaml), so
`cmvl train`, its DDP ranks, sweeps and pre-flight all see the same choices. A user file may not have the name of one
of cmvl's own (Hydra would silently take cmvl's): that is refused in one line. Its `_target_`s are held to the same
allow-list as cmvl's own YAML (trust the package of your own classes with `extra_target_prefixes`).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

import cmvl
from cmvl.errors import ConfigError

CONF_DIR = Path(cmvl.__file__).resolve().parent / "conf"
USER_CONFIG_ENV = "CMVL_CONFIG_DIR"
SEARCHPATH_RESOLVER = "cmvl_config_searchpath"  # cmvl/conf/train.yaml: hydra.searchpath


def user_config_dir() -> Path | None:
    """`$CMVL_CONFIG_DIR` as an absolute folder (None when unset); `ConfigError` if it is not a folder or one of
    its files has the name of one of cmvl's own configs."""
    value = os.environ.get(USER_CONFIG_ENV, "").strip()
    if not value:
        return None
    folder = Path(value).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"{USER_CONFIG_ENV}={value}: not a folder (it holds your own config choices, e.g. fusion/)")
    for path in sorted(folder.rglob("*.yaml")):
        relative = path.relative_to(folder)
        _check_readable_yaml(path)
        if (CONF_DIR / relative).exists():
            group, name = relative.parent.as_posix(), relative.stem
            shipped = f"{group}={name}" if group != "." else f"the primary config {name}.yaml"
            raise ConfigError(
                f"{USER_CONFIG_ENV}: {path} has the name of cmvl's own {shipped}; rename it (your config folder adds "
                "choices, it does not replace cmvl's)"
            )
    return folder


def _check_readable_yaml(path: Path) -> None:
    """A config file of the user's folder reads as YAML holding a mapping (or nothing): Hydra would fail on it with a
    parser traceback, or a misleading line, only once the file is chosen."""
    import yaml

    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        mark = getattr(err, "problem_mark", None)
        if isinstance(err, yaml.MarkedYAMLError) and err.problem and mark is not None:
            reason = f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
        else:
            reason = getattr(err, "strerror", None) or " ".join(str(err).split())
        raise ConfigError(f"{USER_CONFIG_ENV}: {path} is not readable YAML ({reason[:200]})") from None
    if content is not None and not isinstance(content, dict):
        raise ConfigError(
            f"{USER_CONFIG_ENV}: {path} holds a {type(content).__name__}, not a mapping of config keys (key: value)"
        )


def _searchpath() -> list[str]:
    """The `hydra.searchpath` entries: the user's config folder, if set and a folder. Never raises (it runs inside
    Hydra's composition); `user_config_dir()` reports a bad setting in pre-flight."""
    value = os.environ.get(USER_CONFIG_ENV, "").strip()
    folder = Path(value).expanduser().resolve() if value else None
    return [f"file://{folder}"] if folder is not None and folder.is_dir() else []


def register_config_searchpath() -> None:
    """Register `${cmvl_config_searchpath:}` (needed by anything that composes cmvl/conf/train.yaml)."""
    if not OmegaConf.has_resolver(SEARCHPATH_RESOLVER):
        OmegaConf.register_new_resolver(SEARCHPATH_RESOLVER, _searchpath)


def config_dirs() -> list[Path]:
    """cmvl's config tree, then the user's config folder (if set)."""
    user = user_config_dir()
    return [CONF_DIR, *([user] if user is not None else [])]


def config_groups() -> dict[str, list[str]]:
    """Config group name → its choices: the folders of `cmvl/conf/` and of `$CMVL_CONFIG_DIR`."""
    groups: dict[str, set[str]] = {}
    for root in config_dirs():
        for group in root.iterdir():
            if group.is_dir():
                groups.setdefault(group.name, set()).update(p.stem for p in group.glob("*.yaml"))
    return {name: sorted(groups[name]) for name in sorted(groups)}


def choice_file(group: str, choice: str) -> Path | None:
    """The YAML file of `group=choice` (cmvl's own or the user's), None if there is none."""
    for root in config_dirs():
        path = root / group / f"{choice}.yaml"
        if path.is_file():
            return path
    return None
