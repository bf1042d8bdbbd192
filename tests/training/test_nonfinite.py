"""A NaN/inf training loss: every process agrees in the same step, then all skip it exactly (weights and optimizer
state untouched) within a budget, or all stop before the optimizer step with one line (exit 4); never a hang."""

from __future__ import annotations

import math

import pytest
import torch

from cmvl.training.nonfinite import EXIT_NONFINITE, NonFiniteGuard, NonFiniteLoss
from tests.conftest import (
    REPO,
    TINY_TRAINING,
    TINY_WORLD,
    cli_in_process,
    load_checkpoint_file,
    run_cli,
    same_training_state,
)


def _train(tmp_path, *overrides: str, nan_steps: list[int], rank: int = 0, timeout: int | None = None):
    """A tiny run whose loss is NaN at `nan_steps` on process `rank`: in a fresh interpreter with a `timeout` (a DDP
    run, whose ranks Lightning relaunches), in-process otherwise."""
    args = (
        "train",
        *TINY_WORLD,
        *TINY_TRAINING,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=6",
        "data.batch_size=8",
        "checkpoint.every_n_steps=1",
        "checkpoint.keep_last=10",
        "extra_target_prefixes=[tests.]",
        "+callbacks.nan._target_=tests.resume_helpers.NaNLossAtSteps",
        f"+callbacks.nan.steps=[{','.join(map(str, nan_steps))}]",
        f"+callbacks.nan.rank={rank}",
        f"paths.output_dir={tmp_path / 'run'}",
        *overrides,
    )
    if timeout is None:
        return cli_in_process(*args, cwd=tmp_path)
    return run_cli(*args, cwd=tmp_path, env_extra={"PYTHONPATH": str(REPO)}, timeout=timeout)


def _checkpoint(tmp_path, step: int) -> dict:
    return load_checkpoint_file(tmp_path / "run" / "checkpoints" / f"step{step:08d}.ckpt")


def test_skipped_steps_change_nothing_and_the_budget_stops_the_run(tmp_path):
    result = _train(tmp_path, "nonfinite_loss.action=skip", "nonfinite_loss.max_skips=2", nan_steps=[1, 3, 4])
    assert result.returncode == EXIT_NONFINITE, result.stderr[-3000:]
    assert result.stderr.count("cmvl: skipped training step") == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("cmvl: error:")]
    assert errors == [
        "cmvl: error: training loss nan at step 4 (epoch 0, batch 4): stopped before the optimizer step; "
        "2 steps skipped already (nonfinite_loss.max_skips)"
    ]
    assert "Traceback" not in result.stderr
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step*.ckpt"))
    assert saved == [f"step{s:08d}.ckpt" for s in (1, 2, 3, 4)]  # nothing after the stop
    # Steps 1 and 3 were skipped: the state after them is the state before them, to the bit.
    assert same_training_state(_checkpoint(tmp_path, 1), _checkpoint(tmp_path, 2))
    assert same_training_state(_checkpoint(tmp_path, 3), _checkpoint(tmp_path, 4))
    assert not same_training_state(_checkpoint(tmp_path, 2), _checkpoint(tmp_path, 3))  # a normal step does change it
    assert _checkpoint(tmp_path, 4)["cmvl"]["nonfinite"] == {"skipped": 2}  # a resume keeps counting


def test_nan_on_one_ddp_process_skips_then_stops_every_process(tmp_path):
    result = _train(
        tmp_path,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "nonfinite_loss.action=skip",
        "nonfinite_loss.max_skips=1",
        nan_steps=[1, 2],
        rank=1,
        timeout=180,  # a process left waiting in an all-reduce would hang past this
    )
    assert result.returncode == EXIT_NONFINITE, result.stderr[-3000:]
    assert "cmvl: skipped training step 1 (epoch 0, batch 1): loss nan on process 1 (1 of at most 1)" in result.stderr
    assert "cmvl: error: training loss nan on process 1 at step 2 (epoch 0, batch 2)" in result.stderr
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step*.ckpt"))
    assert saved == ["step00000001.ckpt", "step00000002.ckpt"]
    assert same_training_state(_checkpoint(tmp_path, 1), _checkpoint(tmp_path, 2))


class _OneProcess:
    global_step, current_epoch, global_rank = 7, 1, 0

    @staticmethod
    def all_gather(t: torch.Tensor) -> torch.Tensor:
        return t


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_stop_is_the_default_and_names_the_step(bad):
    guard = NonFiniteGuard()
    assert not guard.should_skip(_OneProcess(), torch.tensor(0.5), 3)
    with pytest.raises(NonFiniteLoss, match=r"training loss .*inf|nan.* at step 7 \(epoch 1, batch 3\)") as err:
        guard.should_skip(_OneProcess(), torch.tensor(bad), 3)
    assert "nonfinite_loss.action=skip" in str(err.value) and err.value.exit_code == EXIT_NONFINITE


def test_skip_budget_and_state_round_trip():
    guard = NonFiniteGuard(action="skip", max_skips=1)
    assert guard.should_skip(_OneProcess(), torch.tensor(math.nan), 0)
    restored = NonFiniteGuard(action="skip", max_skips=1)
    restored.load_state_dict(guard.state_dict())
    with pytest.raises(NonFiniteLoss, match="1 steps skipped already"):
        restored.should_skip(_OneProcess(), torch.tensor(math.inf), 0)


def test_bad_settings_are_refused_before_anything_runs(tmp_path):
    result = cli_in_process("train", "nonfinite_loss.action=ignore", cwd=tmp_path)
    assert result.returncode == 2
    assert "nonfinite_loss.action=ignore: must be one of stop, skip" in result.stderr
