"""Config keys that moved out of the config tree, removed from the config a checkpoint saved before they moved.

A checkpoint carries its run's resolved config, and restoring a run builds its components from it; a key that is
no longer a constructor argument would be passed to one. Each fact that moved has one statement now (`MOVED_KEYS`).
"""

from __future__ import annotations

import copy
from typing import Any

# key → where the fact lives now
MOVED_KEYS = {
    "dataset.name": "the Source class's `name`",
    "dataset.provides": "the Source class's `kinds`",
    "dataset.splits": "the Source class's `splits_for(args)`",
    "task.epochs": "the Task class's `epochs` (trainer.max_epochs=null); the run's own budget is trainer.max_epochs",
}


def drop_moved_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a saved (plain, resolved) run config without the keys in `MOVED_KEYS`, a multitask's members'
    `task.tasks.<name>.epochs` included."""
    config = copy.deepcopy(config)
    for key in MOVED_KEYS:
        section, _, leaf = key.partition(".")
        node = config.get(section)
        if isinstance(node, dict):
            node.pop(leaf, None)
            if section == "task":
                for member in (node.get("tasks") or {}).values():
                    if isinstance(member, dict):
                        member.pop(leaf, None)
    return config
