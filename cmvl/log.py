"""cmvl's messages: `cmvl: <message>` lines on stderr through the `cmvl` logger, from the process of global rank 0.

Every module logs through `get_logger(__name__)` (a child of `cmvl`); results a user or a script reads (metrics,
checkpoint paths, report tables) are printed on stdout by the commands themselves. `verbosity` picks how much:

  quiet   warnings and errors only (Lightning's information lines too are left out)
  info    cmvl's progress and notices, Lightning's information lines (the default)
  debug   also cmvl's debug lines, and the third-party noise filtered out otherwise (`NOISE_*` below)

Errors are printed by every process (each may stop for its own reason), and lines logged with `extra=EVERY_RANK`
(what only one process sees: an unreadable image it skipped); the rest only by global rank 0, so a DDP run says
each thing once.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

LOGGER_NAME = "cmvl"
VERBOSITY_LEVELS = {"quiet": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
DEFAULT_VERBOSITY = "info"

# Third-party lines that mean nothing to a cmvl user (they name code the user did not write and cannot change), each
# matched by its exact text: a new or changed message from these libraries still shows. Shown with verbosity=debug.
NOISE_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch >= 2.10 deprecates LeafSpec; Lightning 2.6's _pytree still builds one for every batch it moves
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # torchdata 0.11's StatefulDataLoader calls a deprecated torch function on every loader it creates
    (r"'set_vital' is deprecated", UserWarning),
    # cmvl's LitModule moves batches itself (typed batches), on purpose, with its own DataModule
    (r"You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a", UserWarning),
    # validation and test metrics are torchmetrics values: computing them already synced every process's state
    (r"It is recommended to use `self\.log\('(val|test)/.*sync_dist=True\)`", UserWarning),
    # torch 2.10 deprecates the collective Lightning 2.6's all_gather(sync_grads=True) calls (DDP runs)
    (r"torch\.distributed\.nn\.functional\.all_gather is deprecated", FutureWarning),
    # a run without validation (limit_val_batches=0): cmvl's monitor is the task's own metric, never the user's typo,
    # and the run's end says "no validation score was logged"
    (r"`ModelCheckpoint\(monitor='(val|test)/[^']*'\)` could not find the monitored key", UserWarning),
    # trainer=fsdp: the cross-attention block returns what its attention retrieved (a view); the fusion only reads it
    (r"FSDP2-wrapped module \(FSDP_CrossBlock\) returned a view tensor", UserWarning),
    # dataset=webdataset's stream deals each loader worker its own shards, so its length is exact (cmvl.data.streaming)
    (r"Your `IterableDataset` has `__len__` defined", UserWarning),
)
NOISE_LOG_LINES = (
    # Lightning 2.6 advertises its cloud logger at every Trainer start
    re.compile(r"💡 Tip: For seamless cloud logging and experiment tracking"),
    # torch 2.14 deprecates registering Enum classes as pytree constants; torchao does it on import, and transformers
    # imports torchao whenever it is installed (two lines before any command's own output)
    re.compile(r"is an Enum subclass and is now natively supported by torch\.compile as an opaque value type"),
)
# The loggers Lightning's `rank_zero_info` writes through (whichever package imported last sets it)
_LIGHTNING_RANK_ZERO_LOGGERS = (
    "lightning_utilities.core.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
)
_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")
_TORCH_NOISE_LOGGERS = ("torch.utils._pytree",)  # filtered by NOISE_LOG_LINES like Lightning's rank-zero loggers

EVERY_RANK = {"cmvl_every_rank": True}  # `log.warning(..., extra=EVERY_RANK)`: printed by every process

log = logging.getLogger(LOGGER_NAME)


def get_logger(name: str) -> logging.Logger:
    """The logger of a cmvl module (`get_logger(__name__)`): its lines go where the `cmvl` logger's go."""
    return logging.getLogger(name if name == LOGGER_NAME or name.startswith(LOGGER_NAME + ".") else LOGGER_NAME)


def global_rank() -> int:
    """This process's global rank: Lightning's once a strategy set it, else the launcher's environment."""
    from lightning_utilities.core.rank_zero import rank_zero_only

    rank = getattr(rank_zero_only, "rank", None)
    if rank is not None:
        return int(rank)
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):  # Lightning's own order
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or getattr(record, "cmvl_every_rank", False) or global_rank() == 0


class _Format(logging.Formatter):
    """`cmvl: <message>`; `cmvl: error: <message>` for errors, `cmvl: debug: <message>` for debug lines."""

    def format(self, record: logging.LogRecord) -> str:
        kind = "error: " if record.levelno >= logging.ERROR else "debug: " if record.levelno < logging.INFO else ""
        text = f"cmvl: {kind}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _Stderr(logging.StreamHandler):
    """Writes to `sys.stderr` as it is when a line is written (tests and tools replace it), not as it was at start."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # noqa: ANN201 - the file object logging writes to
        return sys.stderr


class _DropLines(logging.Filter):
    def __init__(self, patterns: tuple[re.Pattern, ...]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


_HANDLER = _Stderr()
_HANDLER.setFormatter(_Format())
_HANDLER.addFilter(_RankZero())
_NOISE_FILTER = _DropLines(NOISE_LOG_LINES)


def check_verbosity(value: object) -> str:
    """`value` if it is a verbosity, else a `ConfigError` naming the choices."""
    if value not in VERBOSITY_LEVELS:
        from cmvl.errors import ConfigError

        raise ConfigError(f"verbosity={value}: must be one of {', '.join(VERBOSITY_LEVELS)}")
    return str(value)


def configure(verbosity: str = DEFAULT_VERBOSITY) -> None:
    """Route the `cmvl` logger to stderr at `verbosity` (quiet | info | debug) and filter the third-party noise
    (kept with debug). Safe to call again: the last call decides."""
    check_verbosity(verbosity)
    if _HANDLER not in log.handlers:
        log.addHandler(_HANDLER)
    log.propagate = False  # Hydra points the root logger at stdout: cmvl's lines stay on stderr, once
    log.setLevel(VERBOSITY_LEVELS[verbosity])
    lightning_level = logging.WARNING if verbosity == "quiet" else logging.INFO
    for name in _LIGHTNING_LOGGERS:  # (importing pytorch_lightning sets its own level to INFO again ...)
        logging.getLogger(name).setLevel(lightning_level)
    noisy = verbosity == "debug"
    for name in _LIGHTNING_RANK_ZERO_LOGGERS:  # (... not these, which all its information lines go through)
        logging.getLogger(name).setLevel(lightning_level)
    for name in (*_LIGHTNING_RANK_ZERO_LOGGERS, *_TORCH_NOISE_LOGGERS):
        logger = logging.getLogger(name)
        (logger.removeFilter if noisy else logger.addFilter)(_NOISE_FILTER)
    for message, category in NOISE_WARNINGS:
        _set_warning_filter(message, category, ignore=not noisy)


def _set_warning_filter(message: str, category: type[Warning], *, ignore: bool) -> None:
    # filterwarnings puts its entry first (replacing an identical one), so the last call's action wins.
    warnings.filterwarnings("ignore" if ignore else "default", message=message, category=category)


def verbosity_of(args: list[str], default: str = DEFAULT_VERBOSITY) -> str:
    """The last `verbosity=...` among command-line overrides (`+`/`++` allowed), else `default`; `default` too for
    a value that is not one (a sweep over it: each job sets its own, from its config)."""
    value = default
    for arg in args:
        key, sep, text = arg.lstrip("+").partition("=")
        if sep and key == "verbosity":
            value = text.strip("'\"")
    return value if value in VERBOSITY_LEVELS else default
