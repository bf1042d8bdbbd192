"""The `nonfinite_loss.*` settings, checked by config validation before a run starts and by the guard itself
(`cmvl.training.nonfinite`), which imports them from here: config does not import training."""

from __future__ import annotations

from cmvl.errors import ConfigError

ACTIONS = ("stop", "skip")


def check_settings(action: str = "stop", max_skips: int = 10) -> None:
    """`nonfinite_loss.*` as config validation and the guard both check it."""
    if action not in ACTIONS:
        raise ConfigError(f"nonfinite_loss.action={action}: must be one of {', '.join(ACTIONS)}")
    if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 0:
        raise ConfigError(f"nonfinite_loss.max_skips={max_skips}: must be an integer >= 0")
