"""Command-line override lines: the user's own, as opposed to Hydra's settings (`hydra.*`, `hydra/...`)."""

from __future__ import annotations

HYDRA_PREFIXES = ("hydra.", "hydra/", "+hydra", "~hydra")


def user_overrides(overrides: list[str]) -> list[str]:
    """The overrides that set the run's configuration (the ones that are checked, and that name a sweep)."""
    return [o for o in overrides if not o.startswith(HYDRA_PREFIXES)]


def hydra_overrides(overrides: list[str]) -> list[str]:
    """The overrides of Hydra's own settings: not part of the run's configuration, but checked too, since some of
    them name classes Hydra builds (`hydra.callbacks.*`, the sweeper, the launcher)."""
    return [o for o in overrides if o.startswith(HYDRA_PREFIXES)]
