"""`cmvl eval ckpt=<retrieval> task=zeroshot [classes=[a,b,...]] [templates=builtin|FILE]`: zero-shot
classification of a `classes` table (the checkpoint's dataset, or `dataset=image_folder dataset.root=DIR`) with a
trained image-text dual encoder; metrics.json and a predictions file like `cmvl eval` writes them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cmvl.errors import ConfigError
from cmvl.evaluation.results import write_results
from cmvl.evaluation.score import score_split
from cmvl.run import Run, restore_run, run_config
from cmvl.tasks.retrieval import RetrievalTask
from cmvl.tasks.zeroshot import ZeroShotTask, read_templates, unknown_classes
from cmvl.training.checkpoint_schema import CHECKPOINT_KEY

ZEROSHOT = "task=zeroshot"
OPTIONS = ("classes", "templates", "top_k")  # the zero-shot command's own keys (`classes=[...]`, ...)


def is_zeroshot(overrides: Sequence[str]) -> bool:
    return ZEROSHOT in overrides


def split_overrides(overrides: Sequence[str]) -> tuple[dict[str, Any], str | None, list[str], list[str]]:
    """(zero-shot options, the `dataset=` choice or None, that dataset's `dataset.*` overrides, the other
    overrides, which apply to the checkpoint's config as `cmvl eval` takes them)."""
    options: dict[str, Any] = {"classes": None, "templates": "builtin", "top_k": 5}
    dataset, dataset_overrides, rest = None, [], []
    for override in overrides:
        key, _, value = override.partition("=")
        if override == ZEROSHOT:
            continue
        if key in OPTIONS:
            options[key] = _parsed(override, key)
        elif key == "dataset":
            dataset = value
        else:
            rest.append(override)
    if dataset is not None:  # its keys belong to the new dataset, not to the checkpoint's
        dataset_overrides = [o for o in rest if o.startswith("dataset.")]
        rest = [o for o in rest if not o.startswith("dataset.")]
    return options, dataset, dataset_overrides, rest


def _parsed(override: str, key: str) -> Any:
    try:
        value = OmegaConf.from_dotlist([override])[key]
    except OmegaConfBaseException:
        raise ConfigError(f"{override}: not a value cmvl can read (e.g. classes=[circle,square,triangle])") from None
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def zeroshot_task(run: Run, options: dict[str, Any], class_names: list[str]) -> ZeroShotTask:
    """The zero-shot task on `run`'s dual encoder: `options["classes"]` (default: the split's `class_names`), every
    one of them in words the run's tokenizer knows."""
    heads = [m.name for m in run.task.members() if isinstance(m, RetrievalTask)]
    if not heads:
        trained = ", ".join(m.name for m in run.task.members())
        raise ConfigError(
            f"task=zeroshot needs an image-text dual encoder: a checkpoint trained with task=retrieval (or a "
            f"multitask with it); this one was trained with task={trained}"
        )
    classes = options["classes"] if options["classes"] is not None else class_names
    if not isinstance(classes, list) or not all(isinstance(c, str | int | float) for c in classes):
        raise ConfigError(f"classes={classes}: a list of class names, e.g. classes=[circle,square,triangle]")
    classes = [str(c) for c in classes]
    unknown = unknown_classes(run.tokenizer, classes)
    if unknown:
        nothing = len(unknown) == len(classes)
        raise ConfigError(
            f"classes={classes}: the checkpoint's tokenizer maps {'every class' if nothing else 'class'} "
            f"{', '.join(repr(c) for c in unknown)} to unknown tokens only, so {'no class' if nothing else 'it'} "
            "can be told apart by its name; name classes in words its text encoder was trained on"
        )
    top_k = options["top_k"]
    if not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k={top_k}: a whole number >= 1")
    return ZeroShotTask(
        classes=classes, templates=read_templates(str(options["templates"])), head=heads[0], top_k=top_k
    )


def with_dataset(cfg: DictConfig, dataset: str, overrides: list[str]) -> DictConfig:
    """`cfg` reading another dataset (`dataset=image_folder dataset.root=DIR`), composed from cmvl's config."""
    from cmvl.config.compose import compose_config
    from cmvl.config.validate import validate_config

    try:
        node = compose_config([f"dataset={dataset}", *overrides]).dataset
    except (HydraException, OmegaConfBaseException) as err:  # an unknown choice or key: the first line says which
        raise ConfigError(f"dataset={dataset}: {str(err).splitlines()[0]}") from None
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.dataset = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    OmegaConf.set_struct(cfg, True)
    validate_config(cfg, check_task=False)  # the trained task's table is not read: zero-shot reads `classes`
    return cfg


def _with_class_label(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A shapes run saved before the world had a classes table gets its default `dataset.class_label` (shape), so
    `dataset.class_label=color` overrides it as in newer checkpoints."""
    dataset = checkpoint[CHECKPOINT_KEY]["config"].get("dataset")
    if isinstance(dataset, dict) and dataset.get("_target_") == "cmvl.data.sources.shapes.ShapesSource":
        dataset.setdefault("class_label", "shape")
    return checkpoint


def evaluate_zeroshot(
    ckpt_path: str | Path, *, overrides: Sequence[str] = (), out_dir: str | Path | None = None
) -> dict[str, Any]:
    """Zero-shot scores of the `classes` table of split `dataset.split`, written next to the checkpoint or into
    `out_dir` (metrics.json, predictions_zeroshot_<split>.json); returns what metrics.json holds."""
    import torch

    from cmvl.tasks.classification import table_classes
    from cmvl.training.build import build_source
    from cmvl.training.checkpoints import load_checkpoint

    options, dataset, dataset_overrides, rest = split_overrides(overrides)
    ckpt_path = Path(ckpt_path)
    checkpoint = load_checkpoint(ckpt_path)
    cfg = run_config(_with_class_label(checkpoint), rest)
    if dataset is not None:
        cfg = with_dataset(cfg, dataset, dataset_overrides)
    source = build_source(cfg)
    if "classes" not in source.kinds:
        raise ConfigError(
            f"task=zeroshot reads a classes table, which dataset={source.name} does not provide; evaluate on "
            "dataset=image_folder dataset.root=DIR (class folders) or the shapes world"
        )
    split = cfg.dataset.split
    run = restore_run(ckpt_path, checkpoint, cfg, device=torch.device("cpu"))
    # Without classes=, the split's own class names (its table is read again to score it; it is small).
    names = table_classes(source.table("classes", split)) if options["classes"] is None else []
    task = zeroshot_task(run, options, names)
    scores = score_split(dataclasses.replace(run, task=task), split)
    return write_results(scores, Path(out_dir) if out_dir else ckpt_path.parent, checkpoint=ckpt_path)
