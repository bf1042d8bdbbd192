"""`evaluate_checkpoint`: rebuild everything from a checkpoint alone, score a split, write the results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cmvl.atomic_file import write_json_atomic
from cmvl.config.eval_overrides import check_eval_overrides
from cmvl.config.legacy import drop_moved_keys
from cmvl.config.targets import split_trust_overrides, without_trust
from cmvl.config.validate import validate_config
from cmvl.errors import ConfigError
from cmvl.tasks.vqa import fill_vqa_eval_of_older_checkpoint
from cmvl.training.build import build_datamodule, build_lit_module, single_device_trainer
from cmvl.training.checkpoints import load_checkpoint, state_dict_errors
from cmvl.training.lit_module import CHECKPOINT_KEY

# Config keys added after some checkpoints were written, with the value that reproduces how those runs behaved;
# a checkpoint's own values win.
KEYS_ADDED_SINCE_OLDER_CHECKPOINTS = {
    "data": {"max_bad_fraction": 0.001, "image_cache_mb": 0, "max_rows_per_image": None}  # None: no cap
}


def checkpoint_config(checkpoint: dict[str, Any], overrides: list[str]):
    # The checkpoint's own extra_target_prefixes are dropped: only this command line may trust packages.
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
    validate_config(cfg)
    return cfg


def evaluate_checkpoint(
    ckpt_path: str | Path,
    *,
    overrides: list[str] = (),
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    ckpt_path = Path(ckpt_path)
    checkpoint = load_checkpoint(ckpt_path)
    cfg = checkpoint_config(checkpoint, list(overrides))
    split = cfg.dataset.split
    datamodule = build_datamodule(cfg, data_state=checkpoint[CHECKPOINT_KEY]["data_state"])
    lit = build_lit_module(cfg, datamodule)
    with state_dict_errors(ckpt_path):
        lit.load_state_dict(checkpoint["state_dict"])
    loaders = datamodule.eval_dataloaders(split)
    lit.score_test = all(loader.collate_fn.targets.annotated for loader in loaders.values())
    trainer = single_device_trainer(cfg, enable_progress_bar=cfg.trainer.get("enable_progress_bar", True))
    trainer.test(lit, dataloaders=list(loaders.values()), verbose=False)
    metrics = {}
    if lit.score_test:
        metrics = {lit.task.metric_key(split, k): float(v) for k, v in lit.test_values.items()}
    out = Path(out_dir) if out_dir else ckpt_path.parent
    predictions_files = {}
    for member in lit.task.members():
        predictions = member.final_predictions(lit.task.member_metric(lit.test_metric, member.name))
        if predictions is None:  # per-batch records, in id order (the first key of each record)
            records = lit.test_predictions.get(member.name, [])
            predictions = sorted(records, key=lambda p: next(iter(p.values())))
        path = out / f"predictions_{member.name}_{split}.json"
        write_json_atomic(path, predictions)
        predictions_files[member.name] = (str(path), _count(predictions))
    result = {
        "checkpoint": str(ckpt_path),
        "split": split,
        "metrics": metrics,
        # One task: its file and count; several: task → file / count.
        "predictions_file": _single_or_all({k: f for k, (f, _) in predictions_files.items()}),
        "num_predictions": _single_or_all({k: n for k, (_, n) in predictions_files.items()}),
    }
    write_json_atomic(out / "metrics.json", result)
    return result


def _count(predictions: list | dict) -> int:
    return len(predictions) if isinstance(predictions, list) else sum(map(len, predictions.values()))


def _single_or_all(by_task: dict[str, Any]) -> Any:
    return next(iter(by_task.values())) if len(by_task) == 1 else by_task
