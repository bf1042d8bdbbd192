"""Where the config tree lives: `cmvl/conf/`, inside the package (so a built wheel carries it)."""

from __future__ import annotations

from pathlib import Path

import cmvl

CONF_DIR = Path(cmvl.__file__).resolve().parent / "conf"


def config_groups() -> dict[str, list[str]]:
    """Config group name → its choices, read from the folders of `cmvl/conf/`."""
    return {
        group.name: sorted(p.stem for p in group.glob("*.yaml"))
        for group in sorted(CONF_DIR.iterdir())
        if group.is_dir()
    }
