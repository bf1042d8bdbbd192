"""Every choice of every config group (found in cmvl/conf/, as `cmvl train --help` lists them) composes, passes
pre-flight, and is built on CPU offline where it can be: a new YAML is tested here without editing this file.

GPU-only choices are validated against this machine (refused in one line without a GPU) and then on CPU; hub-named
models are built from tiny random-init models of the same architecture (tests/choice_helpers.py); a hub name
with no tiny stand-in is composed and validated only. Nothing trains: each part is built and run forward once.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import DictConfig

from cmvl.config.budget import task_budget
from cmvl.config.callbacks import callback_nodes, monitor_arguments
from cmvl.config.compose import compose_config
from cmvl.config.hardware import GPU_ACCELERATORS
from cmvl.config.instantiate import build_task, instantiate
from cmvl.config.paths import config_groups
from cmvl.config.preflight import preflight
from cmvl.errors import ConfigError
from cmvl.models.tokens import FusionOutput, Tokens
from cmvl.training.build import build_source
from cmvl.training.train import trainer_arguments
from tests.choice_helpers import TEXTS, offline_overrides, save_tiny_models
from tests.conftest import TINY_WORLD

GROUPS = config_groups()
CHOICES = [(group, choice) for group, choices in GROUPS.items() for choice in choices]
SHAPES_WORLD = [o for o in TINY_WORLD if o.startswith("dataset.")]  # the tiny world, for every shapes choice


def test_every_group_is_walked():
    """The groups this test knows how to build: a new group fails here until it is given a builder (or is listed
    as composed-only), so no choice goes untested silently."""
    assert set(GROUPS) <= set(BUILDERS) | COMPOSED_ONLY, set(GROUPS) - set(BUILDERS) - COMPOSED_ONLY
    assert len(CHOICES) >= 40  # the walk found the tree (not an empty folder)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("hub"), image_size=224)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "empty").mkdir()
    shards = {"shards": str(_tiny_shard(root / "shard.tar"))}
    return {"empty": str(root / "empty"), "hf": str(_tiny_hf_dataset(root / "hf")), **shards}


def _tiny_shard(path):
    """One image-text sample in a tar shard (dataset=webdataset)."""
    import io

    from PIL import Image
    from webdataset import TarWriter

    image = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(image, format="JPEG")
    with TarWriter(str(path), encoder=False) as writer:
        writer.write({"__key__": "000000000", "jpg": image.getvalue(), "txt": b"a red square"})
    return path


def _tiny_hf_dataset(folder):
    import io

    import datasets
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    rows = {"image": [{"bytes": buffer.getvalue(), "path": None}] * 2, "question": TEXTS, "answers": [["yes"]] * 2}
    rows["caption"] = TEXTS
    split = datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"),
         "answers": datasets.Sequence(datasets.Value("string")), "caption": datasets.Value("string")}
    ))  # fmt: skip
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize(("group", "choice"), CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_choice_composes_validates_and_builds(group, choice, stand_ins, folders, cache_dir, tiny_world, tmp_path):
    overrides = [f"{group}={choice}"]
    cfg = compose_config(overrides)
    if cfg.dataset._target_.endswith("ShapesSource"):
        overrides += SHAPES_WORLD
    overrides += _task_for_the_dataset(cfg)
    overrides += _task_for_the_model(cfg) if group == "model" else []
    fills, buildable = offline_overrides(cfg, stand_ins, folders)
    overrides += [*fills, f"paths.output_dir={tmp_path}"]
    # Validated as a user would run it; a GPU-only choice is refused in one line on a machine without one, and is
    # then validated (and built) on CPU.
    if str(cfg.trainer.accelerator) in GPU_ACCELERATORS and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.accelerator"):
            preflight(overrides, training=False)
        overrides.append("trainer.accelerator=cpu")
    preflight(overrides, training=False)
    if group in BUILDERS and buildable:
        BUILDERS[group](compose_config(overrides))


def _task_for_the_dataset(cfg: DictConfig) -> list[str]:
    """A dataset choice is checked with the default task if the dataset has its table, else with the first task
    that reads one of the dataset's tables (the COCO choice has no `qa` for VQA)."""
    source, task = get_class(cfg.dataset._target_), get_class(cfg.task._target_)
    if getattr(task, "table_kind", None) in source.kinds:
        return []
    for choice in GROUPS["task"]:
        if getattr(get_class(compose_config([f"task={choice}"]).task._target_), "table_kind", None) in source.kinds:
            return [f"task={choice}"]
    raise AssertionError(f"no task reads a table of {cfg.dataset._target_} ({sorted(source.kinds)})")


def _task_for_the_model(cfg: DictConfig) -> list[str]:
    """A model family choice is checked with the default task if it runs on that family, else with the first task
    that does (model=generator runs task=generation only)."""
    family = get_class(cfg.model._target_)
    if issubclass(family, get_class(cfg.task._target_).families):
        return []
    for choice in GROUPS["task"]:
        if issubclass(family, get_class(compose_config([f"task={choice}"]).task._target_).families):
            return [f"task={choice}"]
    raise AssertionError(f"no task runs on model family {cfg.model._target_}")


def _vision(cfg: DictConfig) -> None:
    encoder = instantiate(cfg.vision.encoder).eval()
    size = cfg.vision.image_size
    with torch.no_grad():
        tokens = encoder(torch.randn(1, 3, size, size))
    assert tokens.feats.shape[0] == 1 and tokens.feats.shape[-1] == encoder.out_dim
    assert torch.isfinite(tokens.feats).all()


def _text(cfg: DictConfig) -> None:
    tokenizer = instantiate(cfg.text.tokenizer).build(TEXTS * 3)
    encoder = instantiate(cfg.text.encoder, tokenizer=tokenizer).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        tokens = encoder(batch["input_ids"], batch["attention_mask"])
    assert tokens.feats.shape[:2] == batch["input_ids"].shape and tokens.feats.shape[-1] == encoder.out_dim


def _fusion(cfg: DictConfig) -> None:
    fusion = instantiate(cfg.fusion)
    dim = cfg.model.dim
    vision = Tokens(torch.randn(2, 5, dim), torch.ones(2, 5, dtype=torch.bool), grid=(2, 2))  # [CLS] + a 2×2 grid
    text = Tokens(torch.randn(2, 3, dim), torch.tensor([[True, True, True], [True, True, False]]))
    out = fusion(vision, text)
    assert isinstance(out, FusionOutput) and out.pooled.shape == (2, dim)
    out.pooled.square().sum().backward()
    assert all(p.grad is not None for p in fusion.parameters() if p.requires_grad)


def _task(cfg: DictConfig) -> None:
    task = build_task(cfg)
    assert task.validation_keys() and task_budget(cfg) >= 1
    assert task.metric_key("val", task.monitor_key) in task.validation_keys()


def _dataset(cfg: DictConfig) -> None:
    source = build_source(cfg)
    assert source.split in source.splits and source.kinds


def _optim(cfg: DictConfig) -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = instantiate(cfg.optim.optimizer)([weight])
    weight.sum().backward()
    optimizer.step()
    assert not torch.equal(weight.detach(), torch.ones(3))


def _trainer(cfg: DictConfig) -> None:
    arguments, _ = trainer_arguments(cfg)  # as cmvl train builds them (less requeue; fsdp's strategy)
    arguments["max_epochs"] = arguments["max_epochs"] or task_budget(cfg)
    trainer = pl.Trainer(**arguments, logger=False, enable_checkpointing=False, default_root_dir=cfg.paths.output_dir)
    assert trainer.max_epochs >= 1


def _logger(cfg: DictConfig) -> None:
    from cmvl.training.train import build_loggers

    loggers = build_loggers(cfg)
    assert all(isinstance(logger, pl.loggers.Logger) for logger in loggers)
    assert len(loggers) == len([n for n in cfg.logger.values() if n is not None])


def _callbacks(cfg: DictConfig) -> None:
    nodes = callback_nodes(cfg)
    assert nodes
    for node in nodes.values():
        assert isinstance(instantiate(node, **monitor_arguments(node, "val/vqa/acc", "max")), pl.Callback)


def _generator(cfg: DictConfig) -> None:
    generator = instantiate(cfg.generator, image_size=16, dim=cfg.model.dim)
    cond = Tokens(torch.randn(2, 3, cfg.model.dim), torch.tensor([[True, True, True], [True, False, False]]))
    losses = generator.losses(torch.rand(2, 3, 16, 16) * 2 - 1, cond)
    losses.loss.mean().backward()
    assert losses.loss.shape == (2,) and torch.isfinite(losses.loss).all()
    uncond = Tokens(torch.randn(2, 1, cfg.model.dim), torch.ones(2, 1, dtype=torch.bool))
    images = generator.sample(cond, uncond, generator=torch.Generator().manual_seed(0), steps=2)
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1


def _experiment(cfg: DictConfig) -> None:
    _task(cfg)
    _text(cfg)
    _vision(cfg)


BUILDERS = {
    "vision": _vision,
    "text": _text,
    "fusion": _fusion,
    "task": _task,
    "dataset": _dataset,
    "optim": _optim,
    "trainer": _trainer,
    "logger": _logger,
    "callbacks": _callbacks,
    "experiment": _experiment,
    "generator": _generator,
}
# Groups whose choices are composed and pre-flight-checked only: a search space (its every value is composed by
# pre-flight) and the model family (built with its task's heads and data state by the training tests).
COMPOSED_ONLY = {"hparams_search", "model"}
