"""Restoring a trained run from its checkpoint alone: `load_run(path)` returns a `Run` (config, tokenizer, task with
its learnt state, model in eval mode on a device, and what identifies the checkpoint).

This is the one way cmvl rebuilds a run. `cmvl eval` scores a split with it, a resumed training run restores its
tokenizer and task state with `restore_task`, and whatever uses a trained model (predict, serve, export) starts from
`load_run`. Nothing here opens, reads or generates a dataset: the checkpoint carries the resolved config, the
tokenizer and the task's state (answer vocabulary, categories), and the model is built from them. The checkpoint is
read by the safe loader (`weights_only`, structure checks), and the trust its config claims is dropped: only the
caller's `extra_target_prefixes=` override may trust packages beyond cmvl's own.

    import cmvl
    run = cmvl.load_run("outputs/.../checkpoints/best.ckpt", device="cuda")
    run.task.answers[:5], run.model, run.checkpoint.global_step
    run.predict("photo.jpg", question="What color is the circle?").answer   # cmvl/predict/pipeline.py
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cmvl.errors import ConfigError
from cmvl.models.compression import COMPRESSION_KEY, prepare_compressed_model
from cmvl.predict.pipeline import predict as predict_images
from cmvl.training.checkpoint_schema import CHECKPOINT_KEY, schema_version
from cmvl.training.ema import restored_weights
from cmvl.training.restore import model_weights as model_weights  # also a name of cmvl.run
from cmvl.training.restore import restore_task as restore_task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from cmvl.models.families.base import ModelFamily
    from cmvl.tasks.base import Task

# Config keys added after some checkpoints were written, with the value that reproduces how those runs behaved;
# a checkpoint's own values win.
KEYS_ADDED_SINCE_OLDER_CHECKPOINTS = {
    "data": {"max_bad_fraction": 0.001, "image_cache_mb": 0, "max_rows_per_image": None},  # None: no cap
    "init_from": None,
}
# What `device=` selects → the trainer settings a restored config records (the Run's model computes in float32).
ACCELERATORS = {"cpu": "cpu", "cuda": "gpu", "mps": "mps"}


@dataclass(frozen=True)
class CheckpointInfo:
    """What identifies the checkpoint a run was restored from."""

    path: Path
    sha256: str  # of the file's bytes, as read
    epoch: int
    global_step: int
    schema_version: int  # the checkpoint layout of the restored state (an older file is upgraded to it when read)
    lightning_version: str | None
    val_history: list[dict[str, float]] = field(default_factory=list)  # the validation metrics of each epoch


@dataclass
class Run:
    """A trained run, restored from its checkpoint alone (no dataset read)."""

    config: DictConfig  # the run's resolved config (the checkpoint's, with the caller's overrides)
    tokenizer: PreTrainedTokenizerFast
    task: Task  # with its learnt state (answer vocabulary, categories) and bound to the tokenizer
    model: ModelFamily  # in eval mode, on `device`
    checkpoint: CheckpointInfo
    device: torch.device

    # `run.predict(image, question=..., queries=..., top_k=...)`: typed results for a user's own images, as
    # `cmvl predict` gives them (`cmvl.predict.pipeline.predict`, with this run as its first argument).
    predict = predict_images


def load_run(path: str | Path, *, device: str | torch.device = "cpu", overrides: Sequence[str] = ()) -> Run:
    """The run saved in the checkpoint at `path`, its model in eval mode on `device` ("cpu", "cuda", "cuda:1",
    "mps"). `overrides` are `key=value` lines applied to the checkpoint's config, as `cmvl eval` takes them:
    evaluation options (`task.beam_size=5` for captioning, `task.vqa_eval=2017` for VQA) and
    `extra_target_prefixes=[mylab]` to trust your own package; keys that change the model, the task or only
    training are refused. Raises `UserError` subclasses (one line each) for a missing or invalid file, a bad
    override or an unavailable device."""
    from cmvl.training.checkpoints import load_checkpoint

    path, overrides = _checked_arguments(path, overrides)
    device = resolve_device(device)
    checkpoint = load_checkpoint(path)  # the safe loader: weights_only, structure checks
    cfg = run_config(checkpoint, overrides, device=device)
    return restore_run(path, checkpoint, cfg, device=device)


def _checked_arguments(path: Any, overrides: Any) -> tuple[Path, list[str]]:
    """`load_run`'s path and overrides, or a `TypeError` / `ConfigError` saying what they must be (a bare string of
    overrides would otherwise be read one character at a time, an empty path as the current folder)."""
    if not isinstance(path, str | Path):
        raise TypeError(f"load_run: path must be a str or pathlib.Path (a checkpoint file), not {type(path).__name__}")
    if not str(path).strip():
        raise ConfigError("load_run: path is empty; give the checkpoint file (e.g. outputs/.../checkpoints/best.ckpt)")
    if isinstance(overrides, str | bytes) or not isinstance(overrides, Sequence):
        raise TypeError(
            f"load_run: overrides must be a list of 'key=value' strings (e.g. ['task.beam_size=5']), not "
            f"{type(overrides).__name__} {overrides!r:.60}"
        )
    bad = next((o for o in overrides if not isinstance(o, str)), None)
    if bad is not None:
        raise TypeError(f"load_run: overrides must be 'key=value' strings, not {type(bad).__name__} {bad!r:.60}")
    malformed = next((o for o in overrides if not o.partition("=")[0].strip() and not o.startswith("~")), None)
    if malformed is not None:
        raise ConfigError(f"load_run: override {malformed!r} is not key=value (e.g. task.beam_size=5)")
    return Path(path).expanduser(), list(overrides)


def run_config(checkpoint: dict[str, Any], overrides: list[str], *, device: torch.device | None = None) -> DictConfig:
    """The checkpoint's resolved config with `overrides` applied (evaluation options only) and checked like a
    command line's. Its own `extra_target_prefixes` are dropped: only `overrides` may trust packages. `device`:
    the trainer settings follow it (where the restored model is, in float32), not the checkpoint's training
    hardware, so a GPU run restores on a CPU machine."""
    from cmvl.config.eval_overrides import check_eval_overrides
    from cmvl.config.legacy import drop_moved_keys
    from cmvl.config.targets import split_trust_overrides, without_trust
    from cmvl.config.validate import validate_config
    from cmvl.tasks.vqa import fill_vqa_eval_of_older_checkpoint

    trust, overrides = split_trust_overrides(overrides)
    saved = drop_moved_keys(without_trust(checkpoint[CHECKPOINT_KEY]["config"]))  # keys since moved to classes
    cfg = OmegaConf.merge(KEYS_ADDED_SINCE_OLDER_CHECKPOINTS, saved, OmegaConf.from_dotlist(trust))
    fill_vqa_eval_of_older_checkpoint(cfg.task)  # a key added since, only where the task is VQA
    OmegaConf.set_struct(cfg, True)  # an override of a key the run did not have is a typo, not a new key
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or str(err).splitlines()[0]
        raise ConfigError(f"{key}: no such config key in this checkpoint's config") from None
    check_eval_overrides(cfg, overrides)
    if device is not None:
        cfg.trainer.accelerator = ACCELERATORS[device.type]
        cfg.trainer.devices = [device.index] if device.index is not None else 1
        cfg.trainer.precision = "32-true"
    validate_config(cfg)
    return cfg


def restore_run(path: Path, checkpoint: dict[str, Any], cfg: DictConfig, *, device: torch.device) -> Run:
    """The run of a loaded `checkpoint` (read from `path`) under its config `cfg` (`run_config`)."""
    task, tokenizer = restore_task(cfg, checkpoint, path)
    compression = checkpoint[CHECKPOINT_KEY].get(COMPRESSION_KEY)  # written by cmvl compress
    model = restore_model(cfg, task, tokenizer, checkpoint["state_dict"], path, compression=compression)
    model.to(device).eval()
    return Run(
        config=cfg,
        tokenizer=tokenizer,
        task=task,
        model=model,
        checkpoint=CheckpointInfo(
            path=path,
            sha256=file_sha256(path),
            epoch=int(checkpoint.get("epoch", 0)),
            global_step=int(checkpoint["global_step"]),
            schema_version=schema_version(checkpoint),
            lightning_version=checkpoint.get("pytorch-lightning_version"),
            val_history=list(checkpoint[CHECKPOINT_KEY].get("val_history") or []),
        ),
        device=device,
    )


def restore_model(
    cfg: DictConfig,
    task: Task,
    tokenizer: PreTrainedTokenizerFast,
    state_dict: dict[str, torch.Tensor],
    path: Path | str,
    *,
    compression: dict[str, Any] | None = None,
) -> ModelFamily:
    """The model `cfg` builds for `task`, with the checkpoint's weights (all of them, and nothing else: a weight
    that does not fit is one line naming the checkpoint; of a run trained with `ema.decay`, the moving average).
    `compression`: what `cmvl compress` made of the model (int8 layers, pruned shapes), rebuilt before the weights
    load."""
    from cmvl.training.build import build_model
    from cmvl.training.checkpoints import state_dict_errors

    model = build_model(without_weight_sources(cfg), task, tokenizer)
    weights = restored_weights(state_dict)  # the moving average's (ema.decay) when saved, else the raw weights
    if compression is not None:
        prepare_compressed_model(model, compression, weights)
    with state_dict_errors(path):
        model.load_state_dict(weights)
    return model


# The keys that name where an encoder's or a decoder's initial weights come from (a file, torchvision's or a hub's
# weights); `False` builds the same architecture randomly initialised.
WEIGHT_SOURCE_KEYS = ("pretrained", "lm_pretrained")


def without_weight_sources(cfg: DictConfig) -> DictConfig:
    """`cfg` with every initial-weights source turned off (`vision.encoder.pretrained`, `text.encoder.pretrained`,
    captioning's `task.lm_pretrained`, also in multitask members): the checkpoint's weights replace them all, so a
    restore reads no weights file that may since have moved and downloads nothing."""
    plain = OmegaConf.to_container(cfg, resolve=True)

    def off(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in WEIGHT_SOURCE_KEYS and value not in (False, None):
                    node[key] = False
                else:
                    off(value)
        elif isinstance(node, list):
            for value in node:
                off(value)

    for section in ("vision", "text", "task"):
        off(plain.get(section))
    return OmegaConf.create(plain)


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch device that this machine has, or one line saying why not."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device}: not a device (cpu, cuda, cuda:<index>, mps)") from None
    if resolved.type not in ACCELERATORS:
        raise ConfigError(f"device={device}: cmvl runs models on cpu, cuda or mps")
    if resolved.type != "cuda" and resolved.index not in (None, 0):
        raise ConfigError(
            f"device={device}: {resolved.type} has no device {resolved.index}; use device={resolved.type}"
        )
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={device}: no CUDA GPU is visible on this machine; use device=cpu")
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(f"device={device}: this machine has {count} CUDA GPU(s) (cuda:0 … cuda:{count - 1})")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={device}: Apple's MPS backend is not available here; use device=cpu")
    return resolved


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
