"""Runs started by torchrun (`torchrun --nnodes=N --nproc-per-node=P -m cmvl train ...`): Lightning takes each
process's ranks from torchrun's variables (its `TorchElasticEnvironment`) but never compares them with the
Trainer's `devices` × `num_nodes`; a mismatch trains with wrong shares of the data or fails on a missing device.
`check_torchrun_world` refuses it in one line first."""

from __future__ import annotations

import os
from typing import Any

from pytorch_lightning.plugins.environments import TorchElasticEnvironment

from cmvl.errors import ConfigError


def check_torchrun_world(devices: Any, num_nodes: Any) -> None:
    """Under torchrun: `trainer.devices` (a count or a list) × `trainer.num_nodes` must be torchrun's WORLD_SIZE,
    and `trainer.devices` its processes per node (LOCAL_WORLD_SIZE). Outside torchrun, or with devices=auto/-1
    (counted by Lightning), nothing is checked."""
    if not TorchElasticEnvironment.detect():
        return
    per_node = len(devices) if isinstance(devices, (list, tuple)) else devices
    if not isinstance(per_node, int) or isinstance(per_node, bool) or per_node < 1:
        return
    world, local = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_WORLD_SIZE", per_node))
    if per_node != local or per_node * int(num_nodes) != world:
        raise ConfigError(
            f"trainer.devices={devices} trainer.num_nodes={num_nodes}: torchrun started {world} processes, "
            f"{local} per node; give trainer.devices={local} trainer.num_nodes={max(world // local, 1)}"
        )
