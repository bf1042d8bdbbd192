"""A run that ends by its budget with steps no validation covered (max_steps mid-epoch, an epoch that
check_val_every_n_epoch skips) validates once more at the end: the score is in metrics.csv, summary.json and
best.ckpt, and `cmvl eval` of best.ckpt reproduces it. An epoch end that validated is not repeated; a preemption
signal saves and exits without validating."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY_TRAINING, TINY_WORLD, cli_in_process, run_cli

MONITOR = "val/vqa/acc"


def _train(run_dir: Path, *extra: str, fresh_process: bool = False):
    """A tiny run (epochs of 3 steps), in-process unless `fresh_process` (a run that a signal stops)."""
    args = ("train", *TINY_WORLD, *TINY_TRAINING, f"hydra.run.dir={run_dir}", *extra)
    if fresh_process:
        return run_cli(*args, cwd=run_dir.parent, env_extra={"PYTHONPATH": str(REPO)})
    return cli_in_process(*args, cwd=run_dir.parent)


def _validations(run_dir: Path) -> list[tuple[int, int]]:
    """(epoch, step) of each validation row of metrics.csv."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [(int(r["epoch"]), int(r["step"])) for r in csv.DictReader(f) if r.get(MONITOR)]


def _checkpoint(run_dir: Path, name: str) -> dict:
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, cache_dir) -> Path:
    """2 steps of a 3-step epoch: Lightning alone would never validate."""
    run_dir = tmp_path_factory.mktemp("short") / "run"
    result = _train(run_dir, "trainer.max_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_a_run_shorter_than_an_epoch_validates_and_keeps_a_best_checkpoint(short_run):
    assert _validations(short_run) == [(0, 1)]  # the last trained batch's epoch and step, as an epoch end logs
    summary = json.loads((short_run / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["best_score"] is not None
    assert summary["best_checkpoint"] == str(short_run / "checkpoints" / "best.ckpt")
    assert summary["best_epoch_metrics"]["step"] == 2
    for name in ("best.ckpt", "last.ckpt", "step00000002.ckpt"):  # every checkpoint of the step holds the result
        checkpoint = _checkpoint(short_run, name)
        assert checkpoint["global_step"] == 2
        assert checkpoint["cmvl"]["val_history"][-1]["step"] == 2, name


def test_eval_of_the_best_checkpoint_reproduces_the_final_validation(short_run, tmp_path):
    summary = json.loads((short_run / "summary.json").read_text())
    result = cli_in_process("eval", f"ckpt={short_run / 'checkpoints' / 'best.ckpt'}", f"out={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert math.isclose(metrics[MONITOR], summary["best_score"], abs_tol=1e-6)


def test_a_last_epoch_that_check_val_every_n_epoch_skips_is_validated_once(tmp_path, cache_dir):
    """Epochs 0-2, validation every 2nd epoch: Lightning validates after epoch 1 (step 6) only."""
    run_dir = tmp_path / "run"
    result = _train(run_dir, "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _validations(run_dir) == [(1, 5), (2, 8)]
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 9


def test_an_epoch_end_that_validated_is_not_validated_again(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = _train(run_dir, "trainer.max_steps=3")  # the budget ends with epoch 0, which validated
    assert result.returncode == 0, result.stderr[-3000:]
    assert _validations(run_dir) == [(0, 2)]


def test_a_preempted_run_saves_and_exits_without_validating(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    result = _train(
        run_dir,
        "trainer.max_steps=5",
        "extra_target_prefixes=[tests.]",
        "+callbacks.kill._target_=tests.resume_helpers.SignalAtStep",
        "+callbacks.kill.step=1",
        fresh_process=True,
    )
    assert result.returncode == 3, result.stderr[-3000:]
    assert _validations(run_dir) == []
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step00000001.ckpt"]
