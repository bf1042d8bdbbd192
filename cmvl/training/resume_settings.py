"""The settings a resumed run must share with its checkpoint: one table (`LOOP_SETTINGS`), checked before anything
is built from the checkpoint.

Lightning restores weights, optimizer, scheduler and loop counters whatever the config says now. A change of the
batch size then trains on from a loader position and step counts measured in other batches (the run was seen to
skip validation and report the old best); another task, width or encoder fails inside `load_state_dict` with a
traceback. Every process runs the same check on the same files and config, so under DDP all stop or none does.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cmvl.errors import ConfigError

# Key (a section: every key under it) → what a change would break. Adding a setting is one line here.
LOOP_SETTINGS: dict[str, str] = {
    # Sections that others interpolate come first, so a change is named where it was made (task.dropout and
    # fusion.dropout are ${model.dropout}).
    "model": "the model's shapes and what it trains",
    "seed": "the epoch's training order, which the loader resumes a position in",
    "data.batch_size": "the loader position and step counts of the epoch",
    "data.group_by_image": "the epoch's training order, which the loader resumes a position in",
    "data.max_rows_per_image": "the epoch's training order, which the loader resumes a position in",
    "trainer.devices": "the global batch (processes × data.batch_size) and each process's share of the epoch",
    "trainer.num_nodes": "the global batch (processes × data.batch_size) and each process's share of the epoch",
    "trainer.accumulate_grad_batches": "the optimizer steps per epoch and the schedule",
    "vision": "the image encoder's parameters",
    "text": "the text encoder's parameters",
    "fusion": "the fusion's parameters",
    "task": "the task's heads and loss",
    "optim": "the optimizer and schedule, which continue from the checkpoint's state",
    "ema": "the moving average of the weights, which continues from the checkpoint's",
    "distill": "the training loss (its teacher and weights)",
}

# Keys inside those sections that a resume may change: budget, evaluation-only settings, and what the checkpoint
# supplies anyway (the answer vocabulary, the tokenizer, the weights). A multitask member's keys
# (`task.tasks.<name>.KEY`) match as `task.KEY`. Everything outside the table may change too: trainer.max_epochs /
# max_steps / max_time (train longer), logging, checkpointing, data.num_workers, pin_memory, eval_batch_size,
# precision (the same parameters, computed at another precision: moving to another machine).
FREE_KEYS = (
    "task.epochs",  # the default budget, in the task config of checkpoints written before it moved to Task.epochs
    "task.beam_size",  # evaluation-only decoding and scoring
    "task.length_penalty",
    "task.meteor",
    "task.vqa_eval",
    "task.rerank_k",
    "task.top_k",  # VQA: part of the vocabulary (from the checkpoint); retrieval: how many predictions are listed
    "task.min_answer_count",  # the answer vocabulary comes from the checkpoint
    "text.tokenizer.*",  # the tokenizer comes from the checkpoint
    "*.pretrained",  # initial weights, replaced by the checkpoint's
    "task.lm_pretrained",
    "optim.optimizer.fused",  # the same update, computed by another kernel
)

_ABSENT = object()


def check_loop_settings(config: Mapping[str, Any], checkpoint_config: Mapping[str, Any], path: Path) -> None:
    """Raise `ConfigError` naming the first loop-defining setting whose value differs between the run's resolved
    `config` and the one saved in the checkpoint at `path`. A key the checkpoint does not have (added to cmvl
    since) is not compared."""
    for key, reason in LOOP_SETTINGS.items():
        now, then = _leaves(_select(config, key), key), _leaves(_select(checkpoint_config, key), key)
        for leaf in sorted([*then, *(k for k in now if k not in then)], key=_named_first):
            saved, current = then.get(leaf, _ABSENT), now.get(leaf, _ABSENT)
            if saved is _ABSENT or saved == current or _is_free(leaf):
                continue
            raise ConfigError(
                f"resume: {leaf}={_show(current)} now but {_show(saved)} in {path} (it sets {reason}); set "
                f"{leaf}={_show(saved)} to resume this run, or start a new one (resume=never or another run dir)"
            )


def _select(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    """Dotted key → value of every non-mapping value under `node` (lists are one value)."""
    return dict(_walk(node, prefix)) if node is not _ABSENT else {}


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping) and node:
        for key, value in node.items():
            yield from _walk(value, f"{prefix}.{key}")
    else:
        yield prefix, node


def _named_first(key: str) -> tuple[bool, int]:
    """A section's class (`_target_`) before its arguments (`task._target_` says more than a head width), then
    shallower keys before deeper ones (`text.max_length` before `text.encoder.max_length`, its interpolation)."""
    return (not key.endswith("._target_"), key.count("."))


def _is_free(key: str) -> bool:
    member_key = re.sub(r"^task\.tasks\.[^.]+\.", "task.", key)
    return any(fnmatch.fnmatchcase(member_key, pattern) for pattern in FREE_KEYS)


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(not set)"
    return value if isinstance(value, str) else json.dumps(value)
