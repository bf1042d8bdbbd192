"""The config tree's own rules: unknown groups and keys are one line (not a run of the defaults), the experiment and
callbacks groups, the user config folder ($CMVL_CONFIG_DIR) and what moved out of the YAML (one statement of each
fact: presets inherit their base, a dataset's tables and splits are its Source class's, the budget its task's)."""

from __future__ import annotations

import json
import re

import pytest
from omegaconf import OmegaConf

from cmvl.config.budget import fill_budget
from cmvl.config.compose import compose_config
from cmvl.config.legacy import drop_moved_keys
from cmvl.config.paths import CONF_DIR, config_groups
from cmvl.config.preflight import preflight
from cmvl.errors import ConfigError
from tests.conftest import TINY_TRAINING, TINY_WORLD, assert_one_line_error, cli_in_process


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("+experiment=x", "experiment is one of cmvl's config groups"),  # used to add a key and train the defaults
        (
            "experiment=nope",
            "experiment=nope: unknown choice for 'experiment' (choices: caption_coco_gpt2, caption_minilm",
        ),
        ("callbacks=nope", "callbacks=nope: unknown choice for 'callbacks' (choices: early_stopping"),
        ("callbacks=[early_stopping,nope]", "callbacks=nope: unknown choice"),
        ("foo=bar", "'foo' is neither a config group nor a key of cmvl's config"),
        ("+foo=bar", "'foo' is neither a config group nor a key of cmvl's config"),
        ("+foo.bar=1", "'foo' is neither a config group nor a key"),
        ("logger=null", "logger=null: to choose no logger, use logger=none"),
        ("experiment=null", "experiment=null: null is not a choice"),
    ],
)
def test_unknown_groups_and_keys_are_one_line(override, needle, tmp_path):
    assert_one_line_error(cli_in_process("train", override, cwd=tmp_path), needle)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["callbacks=lr_monitor", "logger=none"], "callbacks.lr_monitor: LearningRateMonitor logs to a logger"),
        (
            ["callbacks=early_stopping", "callbacks.early_stopping.monitor=val/loss"],
            "callbacks.early_stopping.monitor=val/loss: not a metric this task logs (val/vqa/acc",
        ),
        (["+callbacks.x=3"], "callbacks.x=3: a callback is a mapping with a _target_"),
        (["+callbacks.x._target_=os.system"], "callbacks.x._target_=os.system"),  # the allow-list still holds
    ],
)
def test_callback_mistakes_are_one_line_before_anything_runs(overrides, needle, tmp_path):
    assert_one_line_error(cli_in_process("train", *overrides, cwd=tmp_path), needle)
    assert not (tmp_path / "outputs").exists()


def test_callbacks_take_the_tasks_metric_and_stop_early(tmp_path, tiny_world):
    """callbacks=[...] adds Lightning's callbacks to cmvl's own: early stopping on the task's metric (no
    improvement can be big enough here, so it stops after `patience` validations), the LR monitor (one, not
    cmvl's default one as well) and a deeper model summary."""
    result = cli_in_process(
        "train",
        *TINY_WORLD,
        *TINY_TRAINING,
        "callbacks=[early_stopping,lr_monitor,model_summary]",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=100",
        "callbacks.lr_monitor.logging_interval=epoch",
        "trainer.max_epochs=4",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 2, summary  # stopped after the second validation, not at max_epochs=4
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()  # cmvl's checkpoints stay
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert sum(h.startswith("lr-AdamW") for h in header) == 2  # two parameter groups, logged once each
    # max_depth 2: the model's parts are rows of the table (depth 1 lists only `model`)
    assert re.search(r"\bmodel\.fusion\b", result.stdout + result.stderr), result.stderr[-3000:]


def test_an_experiment_recipe_composes_and_trains(tmp_path, tiny_world):
    """experiment=vqa_generate sets the task and its budget; later keys on the command line still win."""
    cfg = compose_config(["experiment=vqa_generate"])
    assert cfg.task.answer_mode == "generate" and cfg.trainer.max_epochs == 3
    assert compose_config(["experiment=vqa_generate", "trainer.max_epochs=7"]).trainer.max_epochs == 7
    result = cli_in_process(
        "train",
        "experiment=vqa_generate",
        *TINY_WORLD,
        *TINY_TRAINING,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert saved.task.answer_mode == "generate" and saved.trainer.max_epochs == 2


def test_the_user_config_folder_adds_choices(tmp_path, monkeypatch):
    (tmp_path / "fusion").mkdir()
    (tmp_path / "fusion" / "wide_attention.yaml").write_text("defaults:\n  - attention\n  - _self_\n\nlayers: 3\n")
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /fusion: wide_attention\n\nmodel:\n  dim: 64\n"
    )
    monkeypatch.setenv("CMVL_CONFIG_DIR", str(tmp_path))
    assert "wide_attention" in config_groups()["fusion"] and "attention" in config_groups()["fusion"]
    preflight(["fusion=wide_attention"], training=False)
    cfg = compose_config(["experiment=mine"])
    assert cfg.fusion.layers == 3 and cfg.fusion._target_.endswith("CrossAttentionFusion") and cfg.model.dim == 64
    result = cli_in_process("train", "fusion=nope", cwd=tmp_path)
    assert_one_line_error(result, "fusion=nope: unknown choice", "wide_attention")
    assert "wide_attention" in cli_in_process("train", "--help", cwd=tmp_path).stdout


def test_the_user_config_folder_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("CMVL_CONFIG_DIR", str(tmp_path / "missing"))
    assert_one_line_error(cli_in_process("train", cwd=tmp_path), "CMVL_CONFIG_DIR=", "not a folder")
    # A file with the name of one of cmvl's own would be silently ignored by Hydra (cmvl's comes first): refused.
    (tmp_path / "fusion").mkdir()
    (tmp_path / "fusion" / "attention.yaml").write_text("_target_: os.system\n")
    monkeypatch.setenv("CMVL_CONFIG_DIR", str(tmp_path))
    assert_one_line_error(cli_in_process("train", cwd=tmp_path), "has the name of cmvl's own fusion=attention")
    (tmp_path / "fusion" / "attention.yaml").rename(tmp_path / "fusion" / "system.yaml")
    assert_one_line_error(cli_in_process("train", "fusion=system", cwd=tmp_path), "fusion._target_=os.system")


def test_presets_inherit_their_base():
    """A named model (text=bert_base, vision=resnet50) states only its name: every other key is its base's."""
    for group, preset, base in [("text", "bert_base", "hf"), ("vision", "resnet50", "torchvision")]:
        text = (CONF_DIR / group / f"{preset}.yaml").read_text()
        assert f"  - {base}\n" in text and "pretrained:" not in text
        composed, inherited = compose_config([f"{group}={preset}"])[group], compose_config([f"{group}={base}"])[group]
        assert set(composed.encoder) == set(inherited.encoder) and composed.encoder.name != "???"


def test_each_fact_is_stated_once():
    """No dataset YAML repeats its class's tables or splits; no task YAML carries a budget; the validation reads
    the Source class (COCO's official splits are its subtypes: no `test` unless the user adds one)."""
    for path in (CONF_DIR / "dataset").glob("*.yaml"):
        assert not {"name", "provides", "splits"} & set(OmegaConf.load(path)), path
    for path in (CONF_DIR / "task").glob("*.yaml"):
        assert "epochs" not in OmegaConf.load(path), path
    with pytest.raises(ConfigError, match="dataset.split=test: must be one of train, val"):
        preflight(["dataset=coco", "dataset.root=/", "task=caption", "dataset.split=test"], training=False)
    preflight(["dataset=coco", "dataset.root=/", "task=caption", "dataset.split=test", "dataset.split_scheme=karpathy"])
    with pytest.raises(ConfigError, match="datasets that do: shapes, visual_genome"):
        preflight(["dataset=coco", "dataset.root=/", "task=grounding"], training=False)


def test_the_budget_is_the_tasks_unless_set():
    for task, epochs in [("vqa", 13), ("caption", 3), ("multitask", 4)]:
        cfg = compose_config([f"task={task}"])
        assert cfg.trainer.max_epochs is None
        fill_budget(cfg)
        assert cfg.trainer.max_epochs == epochs
    cfg = compose_config(["task=caption", "trainer.max_epochs=9"])
    fill_budget(cfg)
    assert cfg.trainer.max_epochs == 9


def test_a_config_saved_before_the_facts_moved_loses_the_moved_keys():
    saved = {
        "dataset": {"_target_": "x", "name": "shapes", "provides": ["qa"], "splits": ["train"], "seed": 0},
        "task": {"_target_": "y", "epochs": 4, "tasks": {"vqa": {"epochs": 13, "top_k": None}}},
    }
    migrated = drop_moved_keys(saved)
    assert migrated == {
        "dataset": {"_target_": "x", "seed": 0},
        "task": {"_target_": "y", "tasks": {"vqa": {"top_k": None}}},
    }
    assert saved["task"]["epochs"] == 4  # the checkpoint's own dict is left as it was
