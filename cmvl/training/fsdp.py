"""`trainer=fsdp`: fully sharded data parallel training (PyTorch's FSDP2, `torch.distributed.fsdp.fully_shard`)
through Lightning's `ModelParallelStrategy`.

Each transformer block of the encoders, the fusion and the decoder (the classes `trainer.fsdp.blocks` names) is its
own FSDP unit, whose parameters are gathered just before it runs and freed after; the rest of the model (embeddings,
CNN stems, heads) is the root unit. Options: mixed precision (`trainer.fsdp.mixed_precision`: parameters gathered
and computed in bf16/fp16, gradients reduced in fp32), activation checkpointing of the blocks
(`trainer.fsdp.activation_checkpointing`), and `reshard_after_forward`.

Checkpoints are consolidated when they are written: rank 0 gathers the full weights and optimizer state and writes
one ordinary cmvl checkpoint file (the parameter names are the unsharded model's), so `resume=auto`, `cmvl eval`,
`init_from` and every other reader load it with `torch.load(weights_only=True)` as any other. Lightning's sharded
format (torch.distributed.checkpoint) is not offered: its `.metadata` file is read with `pickle.load`, which would
run code from a crafted checkpoint folder.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn

from cmvl.log import get_logger

log = get_logger(__name__)
STRATEGY_NAME = "fsdp"  # `trainer.strategy=fsdp` (set by `trainer=fsdp`) is this strategy, not Lightning's FSDP1
MIXED_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}
# `mixed_precision: auto`: the FSDP parameter dtype that goes with each `trainer.precision` (others: none).
PRECISION_DTYPES = {"bf16-mixed": "bf16", "bf16": "bf16", "16-mixed": "fp16", "16": "fp16"}
# The LightningModule's methods that run the model: the tasks call the model's parts directly (encoders, fusion,
# heads), never one `forward`, so FSDP gathers the root unit's parameters around each of these instead.
ROOT_METHODS = ("training_step", "validation_step", "test_step", "predict_step", "_compute")


class BlockShardedStrategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` with one data-parallel dimension over every process (no tensor
    parallelism), full checkpoints written by rank 0, and `shard(module)` applying FSDP2 by block (called from
    `VLLitModule.configure_model`)."""

    def __init__(
        self,
        *,
        blocks: Iterable[str],
        mixed_precision: str | None = None,
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(save_distributed_checkpoint=False, **kwargs)
        self.blocks = tuple(blocks)
        self.mixed_precision = mixed_precision
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward
        self.sharded_blocks: Counter[str] = Counter()

    def setup_environment(self) -> None:
        # Every process is one shard of one data-parallel group (Lightning's "auto" would make the processes of a
        # node a tensor-parallel group).
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def shard(self, module: nn.Module) -> nn.Module:
        """Applies FSDP2 to each block of `module` (the LightningModule), then to `module` itself: the root unit,
        holding every parameter outside the blocks, gathered around each of `ROOT_METHODS`."""
        from torch.distributed.fsdp import register_fsdp_forward_method

        if any(isinstance(m, _fsdp_module_class()) for m in module.modules()):
            return module  # already sharded (configure_model runs again for a later fit/validate of the same model)
        self.sharded_blocks = shard_by_block(
            module,
            self.device_mesh["data_parallel"],
            blocks=self.blocks,
            mixed_precision=self.mixed_precision,
            activation_checkpointing=self.activation_checkpointing,
            reshard_after_forward=self.reshard_after_forward,
        )
        for name in ROOT_METHODS:
            if hasattr(module, name):
                register_fsdp_forward_method(module, name)
        counts = ", ".join(f"{name} ×{n}" for name, n in sorted(self.sharded_blocks.items())) or "none"
        log.info(
            f"fsdp: {sum(self.sharded_blocks.values())} blocks sharded over {self.world_size} processes ({counts})"
        )
        return module


def _fsdp_module_class() -> type:
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def block_modules(module: nn.Module, blocks: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """The submodules of `module` (name, module) whose class name is one of `blocks`, outermost first; a block
    inside another block is not a unit of its own."""
    names = set(blocks)
    found: list[tuple[str, nn.Module]] = []
    for name, sub in module.named_modules():
        if sub is module or type(sub).__name__ not in names:
            continue
        if any(name.startswith(f"{outer}.") for outer, _ in found):
            continue
        found.append((name, sub))
    return found


def shard_by_block(
    module: nn.Module,
    mesh: Any,
    *,
    blocks: Iterable[str],
    mixed_precision: str | None = None,
    activation_checkpointing: bool = False,
    reshard_after_forward: bool = True,
) -> Counter[str]:
    """`fully_shard` each block (with activation checkpointing first, when asked), then the root. Returns how many
    blocks of each class were sharded."""
    from torch.distributed._composable import checkpoint
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mixed_precision is not None:
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=MIXED_PRECISION[mixed_precision], reduce_dtype=torch.float32
        )
    units = block_modules(module, blocks)
    counts = Counter(type(block).__name__ for _, block in units)  # before fully_shard renames the classes
    for _, block in units:
        if activation_checkpointing:
            checkpoint(block)  # the composable API keeps the parameter names (no wrapper module in the path)
        fully_shard(block, **options)
    fully_shard(module, **options)
    return counts


def pop_fsdp_settings(trainer_args: dict[str, Any]) -> None:
    """Replaces `strategy: fsdp` in the Trainer arguments (a dict, changed in place) by a `BlockShardedStrategy`
    built from the `fsdp` section, which is cmvl's (not a Trainer argument) and removed either way."""
    settings = trainer_args.pop("fsdp", None) or {}
    if trainer_args.get("strategy") != STRATEGY_NAME:
        return
    trainer_args["strategy"] = build_strategy(settings, precision=str(trainer_args.get("precision", "32-true")))


def build_strategy(settings: Mapping[str, Any], *, precision: str) -> BlockShardedStrategy:
    """The strategy of a `trainer.fsdp` section (its values are checked at pre-flight, cmvl/config/rules.py)."""
    mixed = settings.get("mixed_precision", "auto")
    return BlockShardedStrategy(
        blocks=settings.get("blocks") or (),
        mixed_precision=PRECISION_DTYPES.get(precision) if mixed == "auto" else mixed,
        activation_checkpointing=bool(settings.get("activation_checkpointing", False)),
        reshard_after_forward=bool(settings.get("reshard_after_forward", True)),
    )
