"""What a config's `_target_`s may build: trust comes from the person running the command, never from a file.

Each config location that cmvl instantiates expects one kind of component (a task, an encoder, a Lightning callback…).
A `_target_` there may name cmvl's own class of that kind, a public class of that kind from the few library modules
listed for it, or a class of that kind under a package the user trusts on the command line
(`extra_target_prefixes`, never read from a checkpoint). A `_target_` anywhere else is refused. Nothing is imported
for a string that is not on these lists: importing a module can run code.

Two more channels build or import code from a config, and are held to what cmvl's and Hydra's shipped configs use:
Hydra's instantiate keywords (`_args_`, `_partial_`, ...) and the `logging.config` keys of Hydra's logging settings
(`class`, `()`, `ext://` values), which import any dotted name they are given.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cmvl.errors import ConfigError

TRUST_KEY = "extra_target_prefixes"
OWN_PACKAGE = "cmvl"


@dataclass(frozen=True)
class Kind:
    """What one config location builds: a subclass of one of `bases` (dotted class paths)."""

    description: str
    bases: tuple[str, ...]
    # Library modules whose public classes (their `__all__`, else the classes they define) of this kind may be built.
    library: tuple[str, ...] = ()


TASK = Kind("a cmvl Task", ("cmvl.tasks.base.Task",))
SOURCE = Kind("a cmvl data Source", ("cmvl.data.sources.base.Source",))
ENCODER = Kind("a torch.nn.Module encoder", ("torch.nn.Module",))
FUSION = Kind("a cmvl Fusion", ("cmvl.models.fusion.base.Fusion",))
MODEL_FAMILY = Kind("a cmvl model family", ("cmvl.models.families.base.ModelFamily",))
GENERATOR = Kind("a cmvl image generator", ("cmvl.models.generators.base.ImageGenerator",))
TOKENIZER = Kind("a cmvl tokenizer builder", ("cmvl.data.text.TrainedWordPiece", "cmvl.data.text.PretrainedTokenizer"))
OPTIMIZER = Kind("a torch.optim.Optimizer", ("torch.optim.Optimizer",), ("torch.optim",))
LOGGER = Kind("a Lightning Logger", ("pytorch_lightning.loggers.Logger",), ("pytorch_lightning.loggers",))
CALLBACK = Kind("a Lightning Callback", ("pytorch_lightning.Callback",), ("pytorch_lightning.callbacks",))
HYDRA_CALLBACK = Kind("a Hydra Callback", ("hydra.experimental.callback.Callback",), ("hydra.experimental.callbacks",))
SWEEPER = Kind(
    "a Hydra Sweeper",
    ("hydra.plugins.sweeper.Sweeper",),
    ("hydra._internal.core_plugins.basic_sweeper", "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper"),
)
LAUNCHER = Kind(
    "a Hydra Launcher",
    ("hydra.plugins.launcher.Launcher",),
    ("hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_submitit_launcher.submitit_launcher"),
)
SAMPLER = Kind("an Optuna sampler", ("optuna.samplers.BaseSampler",), ("optuna.samplers",))

# Every place a `_target_` may stand (`*`: any one key), and what is built there.
LOCATIONS: dict[str, Kind] = {
    "task": TASK,
    "task.tasks.*": TASK,  # a multitask's members
    "dataset": SOURCE,
    "vision.encoder": ENCODER,
    "text.encoder": ENCODER,
    "text.tokenizer": TOKENIZER,
    "fusion": FUSION,
    "model": MODEL_FAMILY,  # the family's class; it builds its parts from their own locations above
    "generator": GENERATOR,  # the image generator of the `generator` family (generator=cvae|diffusion)
    "optim.optimizer": OPTIMIZER,
    "logger.*": LOGGER,
    "callbacks.*": CALLBACK,
    "hydra.callbacks.*": HYDRA_CALLBACK,
    "hydra.sweeper": SWEEPER,
    "hydra.sweeper.sampler": SAMPLER,
    "hydra.launcher": LAUNCHER,
}

# Hydra's instantiate keywords, accepted only where cmvl's shipped config tree uses them, with the value it uses:
# anywhere else they change what a `_target_` is called with (`_args_`) or what it returns (`_partial_`).
INSTANTIATE_KEYWORDS = ("_args_", "_partial_", "_recursive_", "_convert_")
SHIPPED_KEYWORDS: dict[str, Any] = {"optim.optimizer._partial_": True}  # cmvl/conf/optim/*.yaml

# Hydra hands these settings to `logging.config.dictConfig`, which imports what their `class` / `()` keys and
# `ext://` values name. Accepted: what Hydra's shipped logging configs use (hydra/conf/hydra/*_logging/*.yaml).
LOGGING_SETTINGS = ("hydra.job_logging", "hydra.hydra_logging")
LOGGING_IMPORT_KEYS = ("class", "()", "factory")
LOGGING_CLASSES = ("logging.StreamHandler", "logging.FileHandler", "logging.Formatter")
LOGGING_EXTERNALS = ("ext://sys.stdout", "ext://sys.stderr")

HOW_TO_TRUST = (
    f"to build a class of your own, trust its package on the command line: '{TRUST_KEY}=[your_package]' "
    "(a checkpoint's own list is never used)"
)


def trusted_prefixes(cfg: DictConfig | dict) -> tuple[str, ...]:
    """The packages the user trusts (`extra_target_prefixes`), as dotted names without the trailing dot."""
    prefixes = cfg.get(TRUST_KEY) or ()
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    return tuple(p for p in (str(p).strip().rstrip(".") for p in prefixes) if p)


def without_trust(config: dict[str, Any]) -> dict[str, Any]:
    """A loaded file's config with the trust it claims removed: trust comes from the current command line only."""
    return {**config, TRUST_KEY: []}


def split_trust_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(the `extra_target_prefixes=...` lines, the other overrides) of a command line."""
    trust = [o for o in overrides if o.partition("=")[0].lstrip("+") == TRUST_KEY]
    return trust, [o for o in overrides if o not in trust]


def check_targets(cfg: DictConfig | dict, *, at: str = "", trusted: Sequence[str] | None = None) -> None:
    """Raise `ConfigError` unless every `_target_` in `cfg` (the config at `at`; "" = the whole config) stands at a
    known location and names a class of that location's kind that cmvl may build. `trusted` defaults to the
    config's own `extra_target_prefixes`, which only the command line sets."""
    trusted = trusted_prefixes(cfg) if trusted is None else trusted
    for path, key, value in _entries(cfg, at):
        if key == "_target_":
            kind = _kind_at(path)
            if kind is None:
                raise ConfigError(
                    f"{path}._target_={value}: cmvl builds nothing at {path} (a `_target_` may only stand at "
                    f"{', '.join(LOCATIONS)})"
                )
            resolve_target(path, value, kind, trusted)
        elif key in INSTANTIATE_KEYWORDS:
            _check_keyword(_join(path, key), value)
        if _under(f"{path}.", LOGGING_SETTINGS):
            _check_logging_entry(_join(path, key), key, value)


def _check_keyword(where: str, value: Any) -> None:
    expected = SHIPPED_KEYWORDS.get(where, ...)
    if type(value) is not type(expected) or value != expected:
        allowed = ", ".join(f"{k}={v}" for k, v in SHIPPED_KEYWORDS.items()).lower()
        raise ConfigError(
            f"{where}={value}: Hydra's instantiate keywords ({', '.join(INSTANTIATE_KEYWORDS)}) are accepted only "
            f"as cmvl's own configs set them ({allowed}); remove {where}"
        )


def _check_logging_entry(where: str, key: str, value: Any) -> None:
    """Refuse a logging setting that would make `logging.config` import a name Hydra's shipped configs do not use."""
    if key in LOGGING_IMPORT_KEYS and value not in LOGGING_CLASSES:
        raise ConfigError(
            f"{where}={value}: cmvl's logging settings may only use the classes {', '.join(LOGGING_CLASSES)} "
            "(or choose hydra/job_logging=default|disabled|none)"
        )
    if isinstance(value, str) and value.startswith("ext://") and value not in LOGGING_EXTERNALS:
        raise ConfigError(f"{where}={value}: cmvl's logging settings may only name {', '.join(LOGGING_EXTERNALS)}")


def resolve_target(key: str, target: Any, kind: Kind, trusted: Sequence[str]) -> type:
    """The class `target` names, checked to be of `kind` and allowed; imports nothing for a string not allowed."""
    where = f"{key}._target_={target}"
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{where}: not a dotted class path; it must name {kind.description}")
    module_name, _, name = target.rpartition(".")
    own, users = _under(target, (OWN_PACKAGE,)), _under(target, trusted)
    if not (own or users or module_name in kind.library):
        raise ConfigError(f"{where}: not {kind.description} cmvl may build ({_allowed(kind)}); {HOW_TO_TRUST}")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - a trusted module that fails to import is the user's to fix
        raise ConfigError(f"{where}: cannot import {module_name} ({type(err).__name__}: {err})") from None
    obj = getattr(module, name, None)
    if not inspect.isclass(obj) or not issubclass(obj, _bases(kind)):
        raise ConfigError(f"{where}: not a class, or not {kind.description}; {key} must name {kind.description}")
    if own and not users and not obj.__module__.startswith(OWN_PACKAGE + "."):
        raise ConfigError(f"{where}: not one of cmvl's own classes (it is {obj.__module__}.{name})")
    if not own and not users and not _public(module, name, obj):
        raise ConfigError(f"{where}: not a public class of {module_name}")
    return obj


def _entries(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """(path of the mapping, key, value) for every mapping entry under `node`, itself included (plain or OmegaConf
    containers; interpolations are left unresolved: a resolved node is checked again right before it is
    instantiated)."""
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, str(key), value
            if key != "_target_":
                yield from _entries(value, _join(path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _entries(value, f"{path}[{i}]")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind_at(location: str) -> Kind | None:
    parts = location.split(".")
    for pattern, kind in LOCATIONS.items():
        expected = pattern.split(".")
        if len(expected) == len(parts) and all(e in ("*", p) and "[" not in p for e, p in zip(expected, parts)):
            return kind
    return None


def _under(target: str, packages: Sequence[str]) -> bool:
    return any(target.startswith(package + ".") for package in packages)


def _bases(kind: Kind) -> tuple[type, ...]:
    bases = []
    for path in kind.bases:
        module_name, _, name = path.rpartition(".")
        bases.append(getattr(importlib.import_module(module_name), name))
    return tuple(bases)


def _public(module: Any, name: str, obj: type) -> bool:
    if name.startswith("_"):
        return False
    exported = getattr(module, "__all__", None)
    return name in exported if exported is not None else obj.__module__ == module.__name__


def _allowed(kind: Kind) -> str:
    return "cmvl's own classes" + "".join(f", public classes of {m}" for m in kind.library)
