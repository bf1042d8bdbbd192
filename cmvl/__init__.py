"""cmvl: config-driven training and evaluation of vision-language models.

From Python, `cmvl.load_run(path)` restores a trained run from its checkpoint alone (see `cmvl.run`). The names are
imported on first use, so `import cmvl` stays cheap (no torch, Lightning or Hydra until then)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cmvl.run import CheckpointInfo, Run, load_run

__all__ = ["CheckpointInfo", "Run", "load_run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cmvl import run

        return getattr(run, name)
    raise AttributeError(f"module 'cmvl' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
