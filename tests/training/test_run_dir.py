"""Nothing already written is lost: a run dir holds one run (refused, continued or overwritten, never mixed), one
process trains in it at a time (an OS lock the kernel frees when its holder dies), the current folder is never a
run dir, default run dirs are unique, and temporary files of killed writers are cleaned by the next start."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from cmvl.atomic_file import atomic_write, temp_prefix
from cmvl.config.compose import compose_config
from cmvl.errors import UserError
from cmvl.training.run_dir import LOCK_FILE, RunDirLock, claim_run_dir
from tests.conftest import REPO, TINY_TRAINING, TINY_WORLD, assert_one_line_error, cli_in_process

TRAIN = ["train", *TINY_WORLD, *TINY_TRAINING]  # 2 epochs × 3 steps: step00000003.ckpt and step00000006.ckpt
WAIT = ["extra_target_prefixes=[tests.]", "+callbacks.wait._target_=tests.training.test_run_dir.WaitForFile"]
ENV = {"PYTHONPATH": str(REPO)}


class WaitForFile(pl.Callback):
    """Holds a run at its first training step until `path` exists: a run that is surely still running."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        deadline = time.monotonic() + 120
        while not self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's bytes (hashed) and modification time, but the lock's (its content names the last holder)."""
    return {
        str(p.relative_to(folder)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder) != LOCK_FILE
    }


def _dead_writer_temp(folder: Path, target: str) -> Path:
    """A temporary file named by a process that has ended (as a killed save leaves it)."""
    code = f"from cmvl.atomic_file import temp_prefix; print(temp_prefix({target!r}))"
    prefix = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    path = folder / f"{prefix}k1ll3d00.tmp"
    path.write_bytes(b"half a checkpoint")
    return path


def _live_writer_temp(folder: Path, target: str) -> Path:
    path = folder / f"{temp_prefix(target)}al1ve000.tmp"  # this test's own pid: a save in progress
    path.write_bytes(b"being written")
    return path


def _wait_for_lock(run_dir: Path, process: subprocess.Popen) -> None:
    lock = run_dir / LOCK_FILE
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().startswith(f"{process.pid}@")):
        assert process.poll() is None, process.communicate()[1][-3000:]  # it ended without taking the lock
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.2)


def _start_train(run_dir: Path, release: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", **ENV}
    args = [*TRAIN, *WAIT, f"+callbacks.wait.path={release}", f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "cmvl", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


@pytest.fixture()
def finished_run(finished_tiny_run) -> Path:
    """A finished run of TRAIN: the session's shared one (conftest.py), which tests copy before changing."""
    return finished_tiny_run


def test_a_second_train_into_a_finished_run_is_refused_and_changes_nothing(finished_run, tmp_path):
    before = _snapshot(finished_run)
    assert "checkpoints/step00000006.ckpt" in before and "summary.json" in before and ".hydra/config.yaml" in before
    result = cli_in_process(*TRAIN, f"hydra.run.dir={finished_run}", cwd=tmp_path)
    assert_one_line_error(result, str(finished_run), "resume=auto", "overwrite=true", "new hydra.run.dir")
    assert _snapshot(finished_run) == before  # .hydra/ too: the run is refused before Hydra writes into it


def test_stale_temp_files_are_removed_at_the_next_start_and_live_ones_kept(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    dead = [_dead_writer_temp(run_dir / "checkpoints", "last.ckpt"), _dead_writer_temp(run_dir, "summary.json")]
    live = _live_writer_temp(run_dir / "checkpoints", "step00000007.ckpt")
    result = cli_in_process(*TRAIN, f"hydra.run.dir={run_dir}", cwd=tmp_path)  # refused after cleaning
    assert result.returncode == 2
    assert not any(path.exists() for path in dead) and live.exists()


def test_atomic_write_names_its_temporary_file_after_its_process(tmp_path):
    with atomic_write(tmp_path / "a.json") as f:
        f.write("{}")
        (temp,) = tmp_path.iterdir()
        assert temp.name.startswith(f".a.json.{os.getpid()}@") and temp.name.endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_overwrite_and_resume_together_are_refused(tmp_path):
    result = cli_in_process(*TRAIN, "overwrite=true", "resume=auto", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert_one_line_error(result, "overwrite=true", "resume=auto")


def test_overwrite_true_leaves_only_the_new_run_and_a_second_train_meanwhile_is_refused(finished_run, tmp_path):
    run_dir, release = tmp_path / "run", tmp_path / "release"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "notes.txt").write_text("mine")  # not cmvl's: stays
    first = _start_train(run_dir, release, tmp_path, "trainer.max_epochs=1", "overwrite=true")
    try:
        _wait_for_lock(run_dir, first)
        second = cli_in_process(*TRAIN, "resume=auto", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert_one_line_error(second, str(run_dir), "in use", str(first.pid))
        release.touch()
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["best.ckpt", "last.ckpt", "step00000003.ckpt"]  # the old step00000006.ckpt is gone
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 3
    with (run_dir / "metrics.csv").open(newline="") as f:
        steps = {int(row["step"]) for row in csv.DictReader(f) if row.get("step")}
    assert steps and max(steps) <= 3, steps  # no rows of the old run's steps 4-6
    assert (run_dir / "notes.txt").read_text() == "mine" and (run_dir / LOCK_FILE).is_file()


def test_the_lock_of_a_killed_holder_is_free_for_the_next_run(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    code = "import sys, time, pathlib, cmvl.training.run_dir as r; held = r.RunDirLock(pathlib.Path(sys.argv[1]))"
    code += "; time.sleep(99)"  # holds the lock until killed
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(run_dir, holder)
        held = cli_in_process(*TRAIN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert_one_line_error(held, "in use")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        holder.kill()
    after = cli_in_process(*TRAIN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert_one_line_error(after, "earlier run")  # it took the lock: no stale lock stopped it


def _claim_config(run_dir: Path) -> DictConfig:
    return OmegaConf.create(
        {"paths": {"output_dir": str(run_dir)}, "checkpoint": {"dirpath": str(run_dir / "checkpoints")},
         "resume": None, "overwrite": False}
    )  # fmt: skip


def test_the_other_processes_of_a_ddp_run_run_under_its_lock(tmp_path, monkeypatch):
    held = RunDirLock(tmp_path / "run")  # rank 0 of the run
    with pytest.raises(UserError, match="in use"):
        claim_run_dir(_claim_config(tmp_path / "run"))
    monkeypatch.setenv("LOCAL_RANK", "1")  # how Lightning's launcher starts rank 1
    assert claim_run_dir(_claim_config(tmp_path / "run")) is None
    held.release()


@pytest.mark.parametrize("value", ["", ".", "./", "..", "{cwd}"])
def test_the_current_folder_is_refused_as_run_dir(tmp_path, value):
    cwd = tmp_path / "project"
    cwd.mkdir()
    result = cli_in_process(*TRAIN, f"hydra.run.dir={value.format(cwd=cwd)}", cwd=cwd)
    assert_one_line_error(result, "hydra.run.dir", "current folder")
    assert list(cwd.iterdir()) == []  # not even Hydra's .hydra/


def test_default_run_dirs_differ_for_runs_started_in_the_same_second():
    first, second = (compose_config(["trainer=debug"], return_hydra_config=True) for _ in range(2))
    assert first.hydra.run.dir != second.hydra.run.dir
    assert first.hydra.run.dir == first.hydra.run.dir  # one config, one directory (DDP ranks are sent this one)


def test_a_killed_shapes_generation_leaves_nothing_that_is_taken_as_a_world(tmp_path):
    out = tmp_path / "world"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    killed = subprocess.Popen(
        [sys.executable, "-m", "cmvl", "data", "shapes", f"out={out}", "images=20000"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".world.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    (left,) = tmp_path.glob(".world.*.tmp")
    assert not out.exists()
    live = tmp_path / f"{temp_prefix('world')}al1ve000.tmp"
    live.mkdir()  # a generation this process is running
    result = cli_in_process("data", "shapes", f"out={out}", "images=8", "size=16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "shapes.json").is_file() and not left.exists() and live.exists()


@pytest.mark.parametrize("first_file", ["config.yaml", "hparams.yaml"])
def test_a_run_dir_with_the_files_a_run_writes_first_is_refused_unless_continued_or_overwritten(tmp_path, first_file):
    """A run that died before its first checkpoint (or a user's own file of that name) is not written over."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / first_file).write_text("mine")
    with pytest.raises(UserError, match=rf"earlier run \({first_file}\).*resume=auto.*overwrite=true"):
        claim_run_dir(_claim_config(run_dir))
    assert (run_dir / first_file).read_text() == "mine"
    claim_run_dir(OmegaConf.merge(_claim_config(run_dir), {"resume": "auto"})).release()
    assert (run_dir / first_file).read_text() == "mine"
    claim_run_dir(OmegaConf.merge(_claim_config(run_dir), {"overwrite": True})).release()
    assert not (run_dir / first_file).exists()


def test_a_run_dir_inside_another_runs_checkpoints_folder_is_refused(tmp_path):
    checkpoints = tmp_path / "other" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "step00000003.ckpt").write_bytes(b"a checkpoint")
    run_dir = checkpoints / "nested" / "run"
    for resume in (None, "auto"):
        with pytest.raises(UserError, match=rf"inside {checkpoints}.*step00000003.ckpt"):
            claim_run_dir(OmegaConf.merge(_claim_config(run_dir), {"resume": resume}))
    assert not run_dir.exists()
