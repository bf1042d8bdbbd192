"""Resume refuses a change of the settings that define the training loop or the model's shapes (batch size,
processes, accumulation, task, model, encoders, fusion, optimizer, order), in one line naming the key and both
values, before anything is built from the checkpoint; budget, logging and loader settings may change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cmvl.errors import ConfigError
from cmvl.training.resume_settings import check_loop_settings
from tests.conftest import TINY_TRAINING, TINY_WORLD, assert_one_line_error, cli_in_process, run_files

TRAIN = ["train", *TINY_WORLD, *TINY_TRAINING]  # 2 epochs of 3 steps of batch 16


@pytest.fixture()
def finished_run(finished_tiny_run) -> Path:
    """A finished run of TRAIN: the session's shared one (conftest.py), which tests copy before changing."""
    return finished_tiny_run


_files = run_files


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        pytest.param("data.batch_size=8", ("data.batch_size=8 now but 16 in",), id="batch-size"),
        pytest.param("trainer.accumulate_grad_batches=2", ("trainer.accumulate_grad_batches=2", "but 1"), id="accum"),
        pytest.param("model.dim=64", ("model.dim=64 now but 32 in",), id="model-dim"),
        # fusion.dropout and task.dropout are ${model.dropout}: the key the user changed is the one named
        pytest.param("model.dropout=0.1", ("model.dropout=0.1 now but 0.0 in",), id="interpolated"),
        pytest.param("fusion=concat", ("fusion._target_=cmvl.models.fusion.concat.",), id="fusion"),
        pytest.param("vision.encoder.channels=16", ("vision.encoder.channels=16 now but 32",), id="vision"),
        pytest.param("seed=1", ("seed=1 now but 0 in",), id="seed"),
    ],
)
def test_a_changed_loop_setting_is_refused_in_one_line(finished_run, tmp_path, change, needles):
    before = _files(finished_run)
    result = cli_in_process(*TRAIN, change, "resume=auto", f"hydra.run.dir={finished_run}", cwd=tmp_path)
    line = assert_one_line_error(result, *needles, str(finished_run / "checkpoints"), "resume=never")
    assert "resuming from" not in result.stderr, line
    assert _files(finished_run) == before  # no checkpoint, log or summary written or replaced


def test_another_tasks_checkpoint_is_refused_before_its_weights_are_loaded(finished_run, tmp_path):
    """resume=PATH of a VQA checkpoint into a captioning run: the task is named, not a state-dict traceback."""
    checkpoint = finished_run / "checkpoints" / "last.ckpt"
    train = [a for a in TRAIN if not a.startswith("task.")]
    result = cli_in_process(
        *train, "task=caption", f"resume={checkpoint}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert_one_line_error(result, "task._target_=cmvl.tasks.caption.CaptionTask now but cmvl.tasks.vqa.VQATask")


def test_budget_logging_and_loader_settings_may_change(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    result = cli_in_process(
        *TRAIN,
        "resume=auto",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=3",  # train longer
        "trainer.log_every_n_steps=1",
        "data.eval_batch_size=7",
        "data.pin_memory=true",
        "checkpoint.keep_last=3",
        "samples.count=0",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 9


def _config(**changes) -> dict:
    config = {
        "seed": 0,
        "model": {"dim": 32, "dropout": 0.0},
        "data": {"batch_size": 16, "num_workers": 0},
        "trainer": {"devices": 1, "num_nodes": 1, "accumulate_grad_batches": 1, "max_epochs": 2},
        "task": {
            "_target_": "cmvl.tasks.multitask.MultiTask",
            "epochs": 4,
            "tasks": {"caption": {"_target_": "cmvl.tasks.caption.CaptionTask", "beam_size": 3, "layers": 2}},
        },
        "text": {"tokenizer": {"vocab_size": 200}, "encoder": {"pretrained": True, "hidden_size": 32}},
        "optim": {"optimizer": {"_target_": "torch.optim.AdamW", "lr": 3e-4, "fused": True}},
    }
    for key, value in changes.items():
        node = config
        *parents, last = key.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return config


def test_the_table_covers_sections_and_exempts_what_the_checkpoint_supplies():
    saved = _config()
    for free in (
        {"trainer__max_epochs": 9, "data__num_workers": 4},
        {"task__tasks__caption__beam_size": 1, "task__epochs": 1},  # a multitask member's evaluation-only key
        {"text__tokenizer__vocab_size": 999, "text__encoder__pretrained": False},
        {"optim__optimizer__fused": False},
    ):
        check_loop_settings(_config(**free), saved, Path("x.ckpt"))
    for changed, key in (
        ({"task__tasks__caption__layers": 3}, "task.tasks.caption.layers=3 now but 2"),
        ({"trainer__devices": 2}, "trainer.devices=2 now but 1"),
        ({"trainer__num_nodes": 2}, "trainer.num_nodes=2 now but 1"),
        ({"optim__optimizer__lr": 1e-3}, "optim.optimizer.lr=0.001 now but 0.0003"),
        ({"text__encoder__hidden_size": 64}, "text.encoder.hidden_size=64 now but 32"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_loop_settings(_config(**changed), saved, Path("x.ckpt"))


def test_a_key_the_checkpoint_predates_is_not_compared_but_a_removed_one_is():
    saved = _config()
    del saved["data"]["batch_size"]
    check_loop_settings(_config(), saved, Path("x.ckpt"))  # e.g. data.max_rows_per_image in an older checkpoint
    now = _config()
    del now["model"]["dropout"]
    with pytest.raises(ConfigError, match=r"model\.dropout=\(not set\) now but 0\.0"):
        check_loop_settings(now, _config(), Path("x.ckpt"))


def test_every_process_refuses_not_only_rank_zero(finished_run, monkeypatch):
    """Under DDP each process runs the check on the same files: a rank other than 0 raises too (none goes on to
    wait for the others in a collective call)."""
    from pytorch_lightning.utilities import rank_zero_only

    from cmvl.config.compose import compose_config
    from cmvl.training.train import _resume_checkpoint

    cfg = compose_config([*TINY_WORLD, *TINY_TRAINING, "data.batch_size=8", f"hydra.run.dir={finished_run}"])
    cfg.checkpoint.dirpath = str(finished_run / "checkpoints")
    cfg.paths.output_dir = str(finished_run)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    with pytest.raises(ConfigError, match="data.batch_size=8 now but 16"):
        _resume_checkpoint(cfg, "auto", asked=True)
