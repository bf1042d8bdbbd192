"""The real CLI: train a few steps (in a subprocess, the session's shared run) → eval the checkpoint → the same number;
sweeps; errors (in-process, but for one refusal by a fresh interpreter)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_TRAINING, TINY_WORLD, cli_in_process, run_cli

TRAIN_FAST = [*TINY_WORLD, *TINY_TRAINING]


@pytest.fixture()
def trained_run(finished_tiny_run) -> Path:
    """A finished run of TRAIN_FAST, in a folder of its own (never the cwd): the session's shared one (conftest.py)."""
    assert "best val/vqa/acc = " in (finished_tiny_run.parent / "train.out").read_text()
    return finished_tiny_run


@pytest.fixture(scope="module")
def evaluated(finished_tiny_run, tmp_path_factory) -> tuple[Path, object]:
    """`cmvl eval` of its best checkpoint, once for the tests that read what it wrote: the output folder and the
    command's result."""
    out = tmp_path_factory.mktemp("eval")
    result = cli_in_process("eval", f"ckpt={finished_tiny_run / 'checkpoints' / 'best.ckpt'}", f"out={out}", cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_train_writes_the_run_directory(trained_run):
    for name in (
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        ".hydra/config.yaml",
    ):
        assert (trained_run / name).exists(), name
    header = (trained_run / "metrics.csv").read_text().splitlines()[0]
    assert "val/vqa/acc" in header and "val/vqa/acc_yes_no" in header
    # last.ckpt is the final state even when the monitored metric stopped improving before the end.
    summary = json.loads((trained_run / "summary.json").read_text())
    last = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == summary["global_step"]
    assert summary["last_checkpoint"] == str(trained_run / "checkpoints" / "last.ckpt")


def test_eval_reproduces_the_logged_validation_accuracy(trained_run, evaluated):
    summary = json.loads((trained_run / "summary.json").read_text())
    out, result = evaluated
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert math.isclose(metrics["val/vqa/acc"], summary["best_score"], abs_tol=1e-6)
    assert f"val/vqa/acc = {metrics['val/vqa/acc']:.6f}" in result.stdout
    predictions = json.loads((out / "predictions_vqa_val.json").read_text())
    assert predictions and set(predictions[0]) == {"question_id", "answer"}
    assert all(isinstance(p["question_id"], int) and isinstance(p["answer"], str) for p in predictions)


def test_predictions_file_rescored_officially_gives_the_same_accuracy(evaluated, tiny_world):
    from cmvl.metrics.vqa_normalize import vqa_score

    out, _ = evaluated
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    predictions = {p["question_id"]: p["answer"] for p in json.loads((out / "predictions_vqa_val.json").read_text())}
    annotations = json.loads((tiny_world / "v2_mscoco_val_annotations.json").read_text())["annotations"]
    scores = [vqa_score(predictions[a["question_id"]], [x["answer"] for x in a["answers"]]) for a in annotations]
    assert len(predictions) == len(annotations)
    assert math.isclose(sum(scores) / len(scores), metrics["val/vqa/acc"], abs_tol=1e-9)


def test_eval_test_split_and_bad_override(trained_run, tmp_path):
    ok = cli_in_process(
        "eval",
        f"ckpt={trained_run / 'checkpoints' / 'last.ckpt'}",
        "dataset.split=test",
        f"out={tmp_path}",
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (tmp_path / "predictions_vqa_test.json").exists()
    bad = cli_in_process("eval", f"ckpt={trained_run / 'checkpoints' / 'last.ckpt'}", "data.batchsize=3", cwd=tmp_path)
    assert bad.returncode == 2 and "data.batchsize" in bad.stderr and "Traceback" not in bad.stderr


def test_unknown_group_choice_exits_2_with_the_choices(tmp_path):
    """In a fresh interpreter: the process itself exits 2 with one line (the other refusals below run in-process)."""
    result = run_cli("train", "fusion=atention", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "fusion=atention" in lines[0] and "attention" in lines[0] and "concat" in lines[0]


def test_unknown_key_and_bad_value_exit_2(tmp_path):
    for override, needle in [
        ("model.dimm=3", "model.dimm"),
        ("trainer.precision=17", "trainer.precision"),
        ("data.batch_size=0", "data.batch_size"),
        ("text=hf", "text.encoder.name is required"),
    ]:
        result = cli_in_process("train", override, cwd=tmp_path)
        assert result.returncode == 2, (override, result.stderr)
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_sweep_value_is_validated_before_any_job_runs(tmp_path):
    result = cli_in_process("train", "-m", "fusion=concat,atention", cwd=tmp_path)
    assert result.returncode == 2 and "atention" in result.stderr
    assert not (tmp_path / "multirun").exists()


def test_missing_checkpoint_exits_2(tmp_path):
    result = cli_in_process("eval", f"ckpt={tmp_path / 'nope.ckpt'}", cwd=tmp_path)
    assert result.returncode == 2 and "checkpoint not found" in result.stderr and "Traceback" not in result.stderr
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    result = cli_in_process("eval", f"ckpt={garbage}", cwd=tmp_path)
    assert result.returncode == 2 and "garbage.ckpt" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_groups(tmp_path):
    result = cli_in_process("train", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "fusion" in result.stdout and "concat" in result.stdout
    assert "sweep report" in cli_in_process("--help", cwd=tmp_path).stdout


def test_data_shapes_command(tmp_path):
    out = tmp_path / "world"
    result = cli_in_process("data", "shapes", f"out={out}", "images=8", "size=32", "seed=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "v2_mscoco_train_annotations.json").exists() and (out / "annotations" / "captions_val.json").exists()
    again = cli_in_process("data", "shapes", f"out={out}", cwd=tmp_path)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_a_checkpoint_from_before_a_config_key_existed_still_evaluates(trained_run):
    from cmvl.run import restore_task, run_config
    from cmvl.training.build import build_datamodule

    checkpoint = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    del checkpoint["cmvl"]["config"]["data"]["max_bad_fraction"]  # as written before the key was added
    checkpoint["cmvl"]["config"]["task"]["epochs"] = 8  # as written before task.epochs moved to the task classes
    cfg = run_config(checkpoint, [])
    assert cfg.data.max_bad_fraction == 0.001
    task, tokenizer = restore_task(cfg, checkpoint, "best.ckpt")
    datamodule = build_datamodule(cfg, task=task, tokenizer=tokenizer)
    assert datamodule.max_bad_fraction == 0.001 and datamodule.task.answers
