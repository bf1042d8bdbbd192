"""Exact resume: a run preempted by SIGTERM/SIGUSR1 and resumed with `resume=auto` ends bit-identical to an
uninterrupted run (weights, optimizer state, and the sequence of samples seen); without the saved RNG and loader
state it does not (negative control). Also keep_last, and falling back past a truncated checkpoint."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
import torch

from cmvl.training.preemption import EXIT_PREEMPTED
from cmvl.training.resume import RNG_KEY, find_resume_checkpoint
from tests.conftest import REPO, TINY_WORLD, cli_in_process, load_checkpoint_file, run_cli, same_training_state

# 3 epochs × 4 batches = 12 optimizer steps; dropout makes the RNG state matter.
RUN = [
    "trainer=debug",
    "trainer.max_epochs=3",
    "model.dropout=0.1",
    "data.batch_size=8",
    "logger=csv",
]


def _train(
    run_dir: Path | None,
    *extra: str,
    ids_file: Path,
    workers: int = 0,
    cwd: Path | None = None,
    env=None,
    fresh_process: bool = False,
):
    """A run in `run_dir`, or (None) in the default outputs/<date>/<time> under `cwd`: in a fresh interpreter with
    `fresh_process` or `env` (a run that a signal stops, a SLURM job), in-process otherwise (the resumed and reference
    runs: what the process does is not what they test, and bit-identical ends across processes are then shown too)."""
    args = (
        "train",
        *TINY_WORLD,
        *RUN,
        f"data.num_workers={workers}",
        *([f"hydra.run.dir={run_dir}"] if run_dir else []),
        "extra_target_prefixes=[tests.]",
        "+callbacks.ids._target_=tests.resume_helpers.RecordSampleIds",
        f"+callbacks.ids.path={ids_file}",
        *extra,
    )
    if fresh_process or env is not None:
        return run_cli(*args, cwd=cwd or run_dir.parent, env_extra={"PYTHONPATH": str(REPO), **(env or {})})
    return cli_in_process(*args, cwd=cwd or run_dir.parent)


def _final_state(run_dir: Path) -> dict:
    return load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")


def _logged_losses(run_dir: Path) -> list[tuple[int, str, str]]:
    """(step, train/loss_step, train/loss_epoch) of every row of the run's metrics.csv that has either."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = csv.DictReader(f)
        return [
            (int(r["step"]), r["train/loss_step"], r["train/loss_epoch"])
            for r in rows
            if r.get("train/loss_step") or r.get("train/loss_epoch")
        ]


# The reference run checkpoints every step and keeps the last 2: the keep_last test reads (a copy of) its folder,
# and the exact-resume cases, which checkpoint as by default, then also show that how often a run saves changes
# nothing in its training.
KEEP_LAST_2 = ["checkpoint.every_n_steps=1", "checkpoint.keep_last=2"]


@pytest.fixture(scope="module")
def reference_run(tiny_world, tmp_path_factory) -> Path:
    """The uninterrupted run, loading in the training process: its folder (the run dir `run` and `ids.txt`)."""
    root = tmp_path_factory.mktemp("reference")
    done = _train(root / "run", *KEEP_LAST_2, ids_file=root / "ids.txt")
    assert done.returncode == 0, done.stderr[-2000:]
    return root


@pytest.fixture(scope="module")
def reference(reference_run):
    """The reference run's final state, samples and logged losses. Every case is compared with it, the one with 2
    loader processes too: no loader draws from the training process's random generators, so how many processes
    load the batches changes nothing."""
    run_dir = reference_run / "run"
    return _final_state(run_dir), (reference_run / "ids.txt").read_text(), _logged_losses(run_dir)


def _stop(run_dir: Path, ids: Path, stop_step: int, signal_name: str, workers: int = 0):
    """A run that the signal `signal_name` stops right after step `stop_step`."""
    return _train(
        run_dir,
        "+callbacks.kill._target_=tests.resume_helpers.SignalAtStep",
        f"+callbacks.kill.step={stop_step}",
        f"+callbacks.kill.signal_name={signal_name}",
        ids_file=ids,
        workers=workers,
        fresh_process=True,
    )


@pytest.fixture(scope="module")
def ctrl_c_at_6(tiny_world, tmp_path_factory):
    """A run stopped by Ctrl-C (SIGINT) right after step 6, mid-epoch: its folder (`run`, `ids.txt`) and the command's
    result. The Ctrl-C case resumes a copy of it; the negative control resumes a copy from its checkpoint stripped of
    the RNG and loader state (one stopped run for both)."""
    root = tmp_path_factory.mktemp("ctrl-c")
    return root, _stop(root / "run", root / "ids.txt", 6, "SIGINT")


@pytest.mark.parametrize(
    ("stop_step", "signal_name", "workers"),
    [
        pytest.param(6, "SIGINT", 0, id="mid-epoch-ctrl-c"),  # Ctrl-C saves like SIGTERM (2 workers: SIGTERM)
        pytest.param(1, "SIGUSR1", 0, id="first-step-slurm-requeue"),  # see test_slurm_requeue_continues_the_run
        pytest.param(4, "SIGTERM", 0, id="epoch-boundary"),  # the signal is honoured after epoch 0's validation
        pytest.param(6, "SIGTERM", 2, id="mid-epoch-2-workers"),
    ],
)
def test_preempt_and_resume_is_exact(reference, request, tmp_path, stop_step, signal_name, workers):
    if signal_name == "SIGUSR1":
        return _slurm_requeue_continues_the_run(reference, tmp_path, stop_step)
    run_dir, ids = tmp_path / "run", tmp_path / "ids.txt"
    if signal_name == "SIGINT":  # the stopped run shared with the negative control, copied
        root, stopped = request.getfixturevalue("ctrl_c_at_6")
        shutil.copytree(root / "run", run_dir)
        shutil.copy(root / "ids.txt", ids)
    else:
        stopped = _stop(run_dir, ids, stop_step, signal_name, workers)
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-2000:]
    assert f"saved step {stop_step}" in stopped.stderr and "Traceback" not in stopped.stderr
    assert (run_dir / "checkpoints" / f"step{stop_step:08d}.ckpt").is_file()

    resumed = _train(run_dir, "resume=auto", ids_file=ids, workers=workers)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"(global step {stop_step})" in resumed.stderr

    expected_state, expected_ids, expected_losses = reference
    assert ids.read_text() == expected_ids
    assert same_training_state(_final_state(run_dir), expected_state)
    # metrics.csv holds the whole run: the rows logged before the preemption are kept, none is logged twice
    assert _logged_losses(run_dir) == expected_losses


def _slurm_requeue_continues_the_run(reference, tmp_path, stop_step):
    """SLURM's warning signal (SIGUSR1) with `trainer.requeue=true`: save, `scontrol requeue <job>`, exit 3; the
    requeued job runs the same command (no run dir, no resume given), which continues the same run dir exactly."""
    bin_dir, calls, ids = tmp_path / "bin", tmp_path / "scontrol.log", tmp_path / "ids.txt"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = [
        "trainer.requeue=true",
        "+callbacks.kill._target_=tests.resume_helpers.SignalAtStep",
        f"+callbacks.kill.step={stop_step}",
        "+callbacks.kill.signal_name=SIGUSR1",
    ]
    stopped = _train(None, *command, ids_file=ids, cwd=tmp_path, env=env)
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-2000:]
    assert calls.read_text() == "requeue 4242\n"
    [run_dir] = (tmp_path / "outputs").glob("*/*")
    assert f"cmvl: requeued SLURM job 4242: it continues {run_dir}" in stopped.stderr

    resumed = _train(None, *command, ids_file=ids, cwd=tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"cmvl: SLURM job 4242 was requeued: continuing {run_dir}" in resumed.stderr
    assert f"(global step {stop_step})" in resumed.stderr
    assert list((tmp_path / "outputs").glob("*/*")) == [run_dir]  # no second run directory
    assert not (tmp_path / ".cmvl" / "slurm" / "4242.json").exists()  # the finished run's note is spent
    expected_state, expected_ids, expected_losses = reference
    assert ids.read_text() == expected_ids
    assert same_training_state(_final_state(run_dir), expected_state)
    assert _logged_losses(run_dir) == expected_losses


def test_without_saved_rng_and_loader_state_resume_differs(reference, ctrl_c_at_6, tmp_path):
    """Negative control: the same resume from a checkpoint stripped of the RNG and loader state is not exact."""
    run_dir, ids = tmp_path / "run", tmp_path / "ids.txt"
    root, stopped = ctrl_c_at_6
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-2000:]
    shutil.copytree(root / "run", run_dir)
    shutil.copy(root / "ids.txt", ids)
    checkpoint_path = run_dir / "checkpoints" / "step00000006.ckpt"
    checkpoint = load_checkpoint_file(checkpoint_path)
    del checkpoint[RNG_KEY]
    checkpoint["loops"]["fit_loop"]["state_dict"].pop("combined_loader")
    stripped = tmp_path / "stripped.ckpt"
    torch.save(checkpoint, stripped)

    resumed = _train(run_dir, f"resume={stripped}", ids_file=ids)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected_state, expected_ids, _ = reference
    assert ids.read_text() != expected_ids
    assert not same_training_state(_final_state(run_dir), expected_state)


def test_keep_last_and_fallback_past_a_truncated_checkpoint(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run / "run", run_dir)  # a finished run of KEEP_LAST_2; the reference stays intact
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == [
        "best.ckpt",
        "last.ckpt",
        "step00000011.ckpt",
        "step00000012.ckpt",
    ]
    # Truncate every checkpoint at step 12: auto-resume falls back to step 11 and says what it skipped.
    for name in ("last.ckpt", "step00000012.ckpt"):
        data = (checkpoints / name).read_bytes()
        (checkpoints / name).write_bytes(data[: len(data) // 2])
    (checkpoints / "best.ckpt").unlink()
    path, _, skipped = find_resume_checkpoint("auto", checkpoints)
    assert path == checkpoints / "step00000011.ckpt"
    assert len(skipped) == 2 and all("not a readable checkpoint" in line for line in skipped)

    evaluated = cli_in_process("eval", f"ckpt={checkpoints / 'last.ckpt'}", cwd=tmp_path)
    assert evaluated.returncode == 2
    assert "last.ckpt" in evaluated.stderr and "Traceback" not in evaluated.stderr


def test_keep_last_below_two_is_refused(tmp_path):
    done = cli_in_process("train", "checkpoint.keep_last=1", cwd=tmp_path)
    assert done.returncode == 2
    assert "checkpoint.keep_last=1: must be an integer >= 2" in done.stderr
