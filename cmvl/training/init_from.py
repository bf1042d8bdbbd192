"""`init_from=PATH`: a new run whose model starts from another run's weights.

Unlike `resume`, which continues a run (weights, optimizer, schedule, step, loader position), `init_from` takes only
the model weights of the checkpoint at PATH, non-strictly: a weight this model has under the same name and shape is
loaded; the others are listed (not in the checkpoint: left as initialised; not in this model: dropped; of another
shape, e.g. a head over another answer vocabulary: left as initialised). Nothing else is restored: the new run fits
its own task (answer vocabulary, categories) on its own data, starts at step 0 with a fresh optimizer and schedule.

The tokenizer is the one exception, because the text weights are meaningless without it: when the new run's
`text.tokenizer` is the checkpoint's, the new run takes the checkpoint's tokenizer (a tokenizer trained on the new
data would give the loaded word embeddings other words); otherwise it builds its own, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerFast

from cmvl.errors import CheckpointError, ConfigError
from cmvl.log import get_logger
from cmvl.training.checkpoint_schema import CHECKPOINT_KEY
from cmvl.training.checkpoints import load_checkpoint
from cmvl.training.restore import model_weights


@dataclass
class InitialWeights:
    """What a new run takes from the checkpoint `init_from` names."""

    path: Path
    weights: dict[str, torch.Tensor]  # the model's weights under the model's own names
    config: dict[str, Any]  # the checkpoint's resolved config (compared, never used to build anything)
    tokenizer_state: str | dict[str, Any]


@dataclass
class InitReport:
    loaded: list[str]
    missing: list[str]  # this model's weights the checkpoint does not have: left as initialised
    unexpected: list[str]  # the checkpoint's weights this model does not have: dropped
    reshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (name, checkpoint's shape, this model's)


def read_initial_weights(path: str | Path) -> InitialWeights:
    """The checkpoint at `path`, through the safe loader (a missing, unreadable or crafted file is one line)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"init_from={path}: a folder, not a checkpoint file (e.g. its checkpoints/best.ckpt)")
    checkpoint = load_checkpoint(path, mmap=True)
    state = checkpoint[CHECKPOINT_KEY]
    return InitialWeights(
        path=path,
        weights=model_weights(checkpoint["state_dict"]),
        config=state["config"],
        tokenizer_state=state["data_state"]["tokenizer"],
    )


def check_init_with_resume(cfg: DictConfig, resumed: Path | None, checkpoint: dict[str, Any] | None) -> None:
    """Refuses `init_from` when resume continues a run that did not start from the same `init_from`: continuing
    a run restores its own weights, so the two would contradict each other. A run that did start from it (a
    requeued job, a re-run sweep with `init_from`) continues."""
    init = cfg.get("init_from")
    if init is None or checkpoint is None:
        return
    started = checkpoint[CHECKPOINT_KEY]["config"].get("init_from")
    if started == init:
        return
    origin = f"init_from={started}" if started else "its own initialisation"
    raise ConfigError(
        f"init_from={init}: resume continues the run of {resumed}, which started from {origin}; drop init_from to "
        "continue that run, or start a new one from these weights (resume=never, another run dir)"
    )


class SavedTokenizer:
    """A tokenizer builder that returns the checkpoint's tokenizer whatever the texts."""

    def __init__(self, state: str | dict[str, Any]) -> None:
        self.state = state

    def build(self, texts: Any) -> PreTrainedTokenizerFast:
        from cmvl.data.text import tokenizer_from_state

        del texts
        return tokenizer_from_state(self.state)


def tokenizer_builder(cfg: DictConfig, initial: InitialWeights) -> SavedTokenizer | None:
    """The checkpoint's tokenizer when this run's `text.tokenizer` is the one the checkpoint was trained with, else
    None (the run builds its own; a line says that the loaded text weights were learnt with another vocabulary)."""
    own = OmegaConf.to_container(cfg.text.tokenizer, resolve=True)
    if own == (initial.config.get("text") or {}).get("tokenizer"):
        _say(f"init_from: the tokenizer of {initial.path} (the same text.tokenizer; its text weights index it)")
        return SavedTokenizer(initial.tokenizer_state)
    _say(
        f"init_from: text.tokenizer differs from {initial.path}'s: this run builds its own tokenizer, so text weights "
        "loaded from it were learnt with another vocabulary"
    )
    return None


def load_initial_weights(model: torch.nn.Module, initial: InitialWeights) -> InitReport:
    """Copies every weight of `initial` that `model` has under the same name and shape; prints what was skipped."""
    own = model.state_dict()
    fitting = {k: v for k, v in initial.weights.items() if k in own and own[k].shape == v.shape}
    report = InitReport(
        loaded=sorted(fitting),
        missing=sorted(k for k in own if k not in initial.weights),
        unexpected=sorted(k for k in initial.weights if k not in own),
        reshaped=[
            (k, tuple(v.shape), tuple(own[k].shape))
            for k, v in sorted(initial.weights.items())
            if k in own and own[k].shape != v.shape
        ],
    )
    if not fitting:
        raise CheckpointError(
            f"init_from={initial.path}: none of its {len(initial.weights)} weights fits this model (another "
            "encoder, width or fusion?); nothing to start from"
        )
    model.load_state_dict(fitting, strict=False)
    _print_report(report, initial.path, names=[*own, *initial.weights])
    return report


def _print_report(report: InitReport, path: Path, *, names: list[str]) -> None:
    total = len(report.loaded) + len(report.missing) + len(report.reshaped)
    _say(
        f"init_from {path}: {len(report.loaded)} of this model's {total} weights loaded (nothing else: no "
        "optimizer, step, loader or task state)"
    )
    if report.reshaped:  # few (heads over another vocabulary), each with its shapes
        _say(f"init_from: skipped, another shape, left as initialised ({len(report.reshaped)}):")
        for name, then, now in report.reshaped:
            _say(f"  {name} ({list(then)} there, {list(now)} here)")
    for title, keys in (
        ("not in the checkpoint, left as initialised", report.missing),
        ("not in this model, dropped", report.unexpected),
    ):
        if keys:
            _say(f"init_from: {title} ({len(keys)}):")
            for name, count in group_names(keys, names):
                _say(f"  {name}" + (f" ({count} weights)" if count > 1 else ""))


def group_names(keys: list[str], names: list[str]) -> list[tuple[str, int]]:
    """`keys` with each module whose weights (among all `names`) are all in `keys` written once, as `module.*`:
    (name or `module.*`, how many weights it stands for). A new head is one line, not one line per tensor."""
    under_all, under_keys = _prefix_counts(set(names)), _prefix_counts(set(keys))
    groups: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        whole = (p for p in _prefixes(parts) if under_keys[p] == under_all[p])  # shortest first
        label = next((f"{p}*" for p in whole), key)
        groups[label] = groups.get(label, 0) + 1
    return list(groups.items())


def _prefixes(parts: list[str]) -> list[str]:
    return [".".join(parts[:depth]) + "." for depth in range(1, len(parts))]


def _prefix_counts(names: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        for prefix in _prefixes(name.split(".")):
            counts[prefix] = counts.get(prefix, 0) + 1
    return counts


def _say(line: str) -> None:
    get_logger(__name__).info(line)  # (cmvl's log speaks on global rank 0 only)
