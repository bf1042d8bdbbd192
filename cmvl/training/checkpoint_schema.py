"""Checkpoint schema versions, and the migrations that bring a checkpoint written by an older cmvl up to this one's.

Every checkpoint cmvl writes records the layout it was written in, `checkpoint["cmvl"]["schema_version"]`; one
written before versions were recorded has none and is version 1. `upgrade_checkpoint` runs the migrations from a
checkpoint's version up to `SCHEMA_VERSION`, in place, before anything is read from it: `load_checkpoint` (eval,
resume checks, loading a run) and the module's `on_load_checkpoint` (the file Lightning reads to resume) both call
it. This table is the one place that knows older layouts; the modules themselves load only their own.

A checkpoint from a newer cmvl (a version this code does not know) is refused in one line: its layout cannot be
guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cmvl.errors import CheckpointError

CHECKPOINT_KEY = "cmvl"  # the checkpoint section cmvl writes (the resolved config, the data state, the version)
SCHEMA_KEY = "schema_version"
SCHEMA_VERSION = 2
STATE_PREFIX = "model."  # the LightningModule holds the model family as `model`

# The vl_fusion family's parts, by where their weights sit in the state dict.
PART_PREFIXES = {
    "vision": ("model.vision.", "model.vision_proj."),
    "text": ("model.text.", "model.text_proj."),
    "fusion": ("model.fusion.",),
}
# nn.MultiheadAttention's parameter names → cmvl's MultiHeadAttention's (its out_proj.* are the same). The packed
# in-projection is split in three; `q/k/v_proj_weight` is how it stored them when keys or values had their own width.
PACKED_ATTENTION = {"in_proj_weight": "weight", "in_proj_bias": "bias"}
SEPARATE_ATTENTION = {f"{x}_proj_weight": f"{x}_proj.weight" for x in "qkv"}
# nn.TransformerDecoder's parameter names inside the caption decoder → cmvl's DecoderLayer's.
TORCH_DECODER_NAMES = {
    "self_attn": "self_attn",
    "multihead_attn": "cross_attn",
    "norm1": "norm_self",
    "norm2": "norm_cross",
    "norm3": "norm_ff",
    "linear1": "ff.0",
    "linear2": "ff.3",
}
TORCH_DECODER_KEY = re.compile(r"layers\.layers\.(\d+)\.([a-z_]+\d?)\.(.+)")
VL_FUSION_TARGET = "cmvl.models.families.vl_fusion.VisionLanguageModel"


@dataclass(frozen=True)
class Migration:
    """Upgrades a checkpoint of version `version` to `version + 1`, in place."""

    version: int
    summary: str
    apply: Callable[[dict[str, Any]], None]


def schema_version(checkpoint: dict[str, Any]) -> int:
    """The layout a checkpoint was written in (1: written before versions were recorded)."""
    section = checkpoint.get(CHECKPOINT_KEY)
    version = section.get(SCHEMA_KEY, 1) if isinstance(section, dict) else 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"its '{CHECKPOINT_KEY}.{SCHEMA_KEY}' is {version!r}, not a schema version (1, 2, …)")
    return version


def upgrade_checkpoint(checkpoint: dict[str, Any], *, path: Any = "the checkpoint") -> dict[str, Any]:
    """`checkpoint` (a loaded cmvl checkpoint) in this cmvl's layout, upgraded in place; a checkpoint already in it
    is left as it is. Raises `CheckpointError` (one line naming `path`) for a version newer than this cmvl's."""
    try:
        version = schema_version(checkpoint)
    except CheckpointError as err:
        raise CheckpointError(f"not a valid cmvl checkpoint: {path}: {err}") from None
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"checkpoint {path} was written by a newer cmvl (checkpoint schema {version}; this cmvl reads schema "
            f"{SCHEMA_VERSION} and older): upgrade cmvl to use it"
        )
    if not isinstance(checkpoint.get(CHECKPOINT_KEY), dict):
        return checkpoint  # not cmvl's layout at all: the structure check says so
    for migration in MIGRATIONS[version - 1 :]:
        try:
            migration.apply(checkpoint)
        except Exception as err:  # noqa: BLE001 - a crafted file can hold anything where a layout is expected
            raise CheckpointError(
                f"not a valid cmvl checkpoint: {path}: it does not upgrade from schema {migration.version} "
                f"({type(err).__name__}: {str(err)[:150]})"
            ) from None
        checkpoint[CHECKPOINT_KEY][SCHEMA_KEY] = migration.version + 1
    return checkpoint


# -- version 1 → 2 -----------------------------------------------------------------------------------------------
def _v1_to_v2(checkpoint: dict[str, Any]) -> None:
    config, state = checkpoint[CHECKPOINT_KEY].get("config"), checkpoint.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        return  # the structure check that follows reports what is missing
    model = config.get("model")
    if isinstance(model, dict):
        model.setdefault("_target_", VL_FUSION_TARGET)  # version 1 had one model class, the vl_fusion family
    for prefix in _cmvl_module_prefixes(config):
        rename_torch_decoder_keys(state, prefix)
        split_packed_attention(state, prefix)
    parts = _task_parts(config)
    if parts is not None:
        for part, prefixes in PART_PREFIXES.items():
            if part not in parts:
                for key in [k for k in state if k.startswith(prefixes)]:
                    del state[key]


def _cmvl_module_prefixes(config: dict[str, Any]) -> list[str]:
    """Where version 1 held cmvl's own attention modules: its fusion and its tasks' heads (a class of the user's
    own, built under `extra_target_prefixes`, keeps its weights as they are)."""
    prefixes = [f"{STATE_PREFIX}fusion."] if _is_cmvl(config.get("fusion")) else []
    task = config.get("task")
    members = task.get("tasks") if isinstance(task, dict) else None
    if isinstance(members, dict):  # a multitask: one head per member, by its key
        heads = [name for name, node in members.items() if _is_cmvl(node)]
    else:
        heads = [_task_name(task["_target_"])] if _is_cmvl(task) else []
    return prefixes + [f"{STATE_PREFIX}heads.{name}." for name in heads if name]


def _is_cmvl(node: Any) -> bool:
    return isinstance(node, dict) and isinstance(node.get("_target_"), str) and node["_target_"].startswith("cmvl.")


def _task_name(target: str) -> str | None:
    """The head name (`Task.name`) of cmvl's task class `target`, without building the task."""
    from cmvl.config.targets import TASK, resolve_target
    from cmvl.errors import ConfigError

    try:
        return resolve_target("task", target, TASK, ()).name
    except ConfigError:
        return None


def _task_parts(config: dict[str, Any]) -> frozenset[str] | None:
    """The parts the checkpoint's task needs (`Task.parts`), from its config; None for a task that is not cmvl's
    own (only cmvl's tasks are built here: the trust of `extra_target_prefixes` is the command line's) or a config
    that does not build (the config checks report it)."""
    from omegaconf import OmegaConf

    from cmvl.config.instantiate import build_task

    try:
        return build_task(OmegaConf.create({**config, "extra_target_prefixes": []})).parts
    except Exception:  # noqa: BLE001 - a user's own task, or a config the config checks report
        return None


def split_packed_attention(state: dict[str, torch.Tensor], prefix: str) -> None:
    """Under `prefix`, nn.MultiheadAttention's packed (or separate) q/k/v projections become the q_proj, k_proj,
    v_proj `nn.Linear`s of cmvl's MultiHeadAttention, in place."""
    for key in [k for k in state if k.startswith(prefix)]:
        module, _, name = key.rpartition(".")
        if name in PACKED_ATTENTION:
            packed = state.pop(key)
            for proj, chunk in zip(("q_proj", "k_proj", "v_proj"), packed.chunk(3), strict=True):
                state[f"{module}.{proj}.{PACKED_ATTENTION[name]}"] = chunk.clone()
        elif name in SEPARATE_ATTENTION:
            state[f"{module}.{SEPARATE_ATTENTION[name]}"] = state.pop(key)


def rename_torch_decoder_keys(state: dict[str, torch.Tensor], prefix: str) -> None:
    """Under `prefix` (a caption decoder's place), nn.TransformerDecoder's layer and final-norm names become cmvl's
    DecoderLayer names, in place (the attention inside is converted by `split_packed_attention`)."""
    for key in [k for k in state if k.startswith(prefix + "layers.")]:
        name = key[len(prefix) :]
        match = TORCH_DECODER_KEY.fullmatch(name)
        if match and match[2] in TORCH_DECODER_NAMES:
            index, module, rest = match[1], TORCH_DECODER_NAMES[match[2]], match[3]
            state[f"{prefix}layers.{index}.{module}.{rest}"] = state.pop(key)
        elif name.startswith("layers.norm."):
            state[prefix + name.removeprefix("layers.")] = state.pop(key)


# MIGRATIONS[v - 1] upgrades version v to v + 1; the last one reaches SCHEMA_VERSION.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "the model is a family (model._target_: vl_fusion); nn.MultiheadAttention / nn.TransformerDecoder weights "
        "become cmvl's attention modules' q/k/v projections; the parts a task does not need (frozen before) are "
        "no longer built, so their weights go",
        _v1_to_v2,
    ),
)
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION)), "one migration per version step"
