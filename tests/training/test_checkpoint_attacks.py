"""Crafted and mismatching checkpoints, through `cmvl eval ckpt=` and `cmvl train resume=`: one line, exit 2, and a
checkpoint save that fails (a full disk) stops the run in one line naming the last good checkpoint, with every
earlier checkpoint file intact."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from cmvl.errors import CheckpointError
from cmvl.training.checkpoint_io import AtomicCheckpointIO
from tests.conftest import (
    REPO,
    TINY_TRAINING,
    TINY_WORLD,
    assert_one_line_error,
    cli_in_process,
    load_checkpoint_file,
    run_cli,
)


@pytest.fixture(scope="module")
def disk_full_run(tiny_world, tmp_path_factory):
    """A tiny run whose disk fills after epoch 0 (step 4): its epoch-0 checkpoints are the crafting material."""
    root = tmp_path_factory.mktemp("attacks")
    run_dir, snapshot = root / "run", root / "snapshot"
    result = run_cli(
        "train",
        *TINY_WORLD,
        *TINY_TRAINING,
        f"hydra.run.dir={run_dir}",
        "extra_target_prefixes=[tests.]",
        "+callbacks.disk._target_=tests.training.test_checkpoint_attacks.DiskFullFromStep",
        "+callbacks.disk.step=4",
        f"+callbacks.disk.snapshot={snapshot}",
        cwd=root,
        env_extra={"PYTHONPATH": str(REPO)},
    )
    return result, run_dir / "checkpoints", snapshot


@pytest.fixture(scope="module")
def trained(disk_full_run) -> Path:
    """That run's last good checkpoint without the test's own callback in its config (an evaluation would refuse
    to build it: only the command line trusts packages), in a folder of its own."""
    checkpoint = load_checkpoint_file(disk_full_run[1] / "last.ckpt")
    del checkpoint["cmvl"]["config"]["callbacks"]["disk"]
    path = disk_full_run[2].parent / "clean" / "last.ckpt"
    path.parent.mkdir()
    torch.save(checkpoint, path)
    return path


def _set(path: str, value) -> Callable[[dict], None]:
    def edit(checkpoint: dict) -> None:
        *parents, last = path.split("/")
        node = checkpoint
        for part in parents:
            node = node[part]
        node[last] = value

    return edit


def _delete(path: str) -> Callable[[dict], None]:
    def edit(checkpoint: dict) -> None:
        *parents, last = path.split("/")
        node = checkpoint
        for part in parents:
            node = node[part]
        del node[last]

    return edit


def _first_weight(edit: Callable[[dict, str], None]) -> Callable[[dict], None]:
    return lambda checkpoint: edit(checkpoint["state_dict"], next(iter(checkpoint["state_dict"])))


# name → (edit of a real checkpoint, a part of the expected line)
CRAFTED = {
    "config-missing-task": (_delete("cmvl/config/task"), "no 'task' section"),
    "config-model-dim-a-string": (_set("cmvl/config/model/dim", "big"), "model.dim"),
    "config-not-a-dict": (_set("cmvl/config", [1, 2]), "'cmvl.config' is a list"),
    "cmvl-section-not-a-dict": (_set("cmvl", "x"), "'cmvl' is a str"),
    "vocabulary-not-a-list": (_set("cmvl/data_state/task/answers", 12345), "task state does not fit"),
    "tokenizer-garbage": (_set("cmvl/data_state/tokenizer/tokenizer_json", "{not json"), "tokenizer state"),
    "rng-garbage": (_set("cmvl_rng", ["x"]), "RNG state"),
    "global-step-a-string": (_set("global_step", "abc"), "'global_step' is a str"),
    "global-step-negative": (_set("global_step", -5), "'global_step' is negative"),
    "epoch-negative": (_set("epoch", -1), "'epoch' is negative"),
    "weight-not-a-tensor": (_first_weight(lambda sd, k: sd.__setitem__(k, "x")), "is not a tensor"),
    "weight-wrong-shape": (_first_weight(lambda sd, k: sd.__setitem__(k, torch.zeros(3, 3))), "size mismatch"),
    "weight-missing": (_first_weight(lambda sd, k: sd.pop(k)), "Missing key"),
    "weight-unexpected": (_set("state_dict/bogus.weight", torch.zeros(1)), "Unexpected key"),
    # OmegaConf would resolve these on reading the config: an environment variable into a printed value, or a
    # resolver registered in the process.
    "config-env-interpolation": (_set("cmvl/config/task/name", "${oc.env:HOME}"), "task.name is an interpolation"),
    "config-nested-interpolation": (_set("cmvl/config/model/extra", {"k": ["${oc.decode:'1'}"]}), "model.extra.k.0"),
}


def _every_callback_state(value) -> Callable[[dict], None]:
    return lambda checkpoint: checkpoint["callbacks"].update({key: value for key in checkpoint["callbacks"]})


# States only a resume restores (Lightning's loops, optimizers, schedulers, callbacks; cmvl's own section): each
# passes the structure check and made Lightning's or a hook's restore code raise (AttributeError, KeyError …).
RESTORE_CRAFTED = {
    "loops-garbage": (_set("loops", {"fit_loop": {"state_dict": "garbage"}}), "does not restore a training state"),
    "scheduler-garbage": (_set("lr_schedulers", [{"foo": 1}]), "does not restore a training state"),
    "optimizer-garbage": (_set("optimizer_states", [{"foo": 1}]), "does not restore a training state"),
    "epoch-loss-strings": (_set("cmvl/epoch_loss", ["a", "b"]), "does not restore a training state"),
    "callback-states-garbage": (_every_callback_state("garbage"), "does not restore a training state"),
}
CRAFTED.update(RESTORE_CRAFTED)
# Only the state-dict cases build a model before failing in training; the others fail on load (cheap).
NOT_A_CHECKPOINT = {
    "random-bytes": lambda p: p.write_bytes(random.Random(0).randbytes(3000)),
    "empty-file": lambda p: p.write_bytes(b""),
    "a-zip": lambda p: zipfile.ZipFile(p, "w").close(),
    "a-directory": lambda p: p.mkdir(),
    "a-list": lambda p: torch.save([1, 2], p),
}


def _crafted(trained: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    checkpoint = load_checkpoint_file(trained)
    edit(checkpoint)
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    return path


def _eval(path: Path, *overrides: str, cwd: Path):
    return cli_in_process("eval", f"ckpt={path}", "trainer.enable_progress_bar=false", *overrides, cwd=cwd)


def _resume(path: Path, cwd: Path):
    return cli_in_process(
        "train",
        *TINY_WORLD,
        *TINY_TRAINING,
        "trainer.max_epochs=3",
        f"resume={path}",
        f"hydra.run.dir={cwd}/run",
        cwd=cwd,
    )


# One case of each kind through `train resume=` (each composes a training run: slower); eval takes them all.
RESUMED = ("config-missing-task", "vocabulary-not-a-list", "weight-wrong-shape", "global-step-negative")


@pytest.mark.parametrize(
    ("name", "command"),
    [
        *((n, "eval") for n in CRAFTED if n not in RESTORE_CRAFTED),
        *((n, "resume") for n in (*RESUMED, *RESTORE_CRAFTED)),
    ],
)
def test_crafted_checkpoint_is_one_line(trained, tmp_path, name, command):
    edit, needle = CRAFTED[name]
    path = _crafted(trained, tmp_path, edit)
    result = _eval(path, cwd=tmp_path) if command == "eval" else _resume(path, tmp_path)
    line = assert_one_line_error(result, needle)
    assert "crafted.ckpt" in line or name == "config-model-dim-a-string"


@pytest.mark.parametrize(("name", "command"), [*((n, "eval") for n in NOT_A_CHECKPOINT), ("random-bytes", "resume")])
def test_non_checkpoint_file_is_one_line(tmp_path, name, command):
    path = tmp_path / "x.ckpt"
    NOT_A_CHECKPOINT[name](path)
    result = _eval(path, cwd=tmp_path) if command == "eval" else _resume(path, tmp_path)
    assert_one_line_error(result, "x.ckpt")


def test_eval_refuses_a_model_shape_override(trained, tmp_path):
    result = _eval(trained, "model.dim=64", cwd=tmp_path)
    assert_one_line_error(result, "model.dim", "cannot override")
    assert not (trained.parent / "metrics.json").exists()


def test_eval_takes_an_evaluation_override(trained, tmp_path):
    result = _eval(trained, "dataset.split=test", "data.eval_batch_size=7", f"out={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "predictions_vqa_test.json").is_file()


class DiskFullFromStep(pl.Callback):
    """From optimizer step `step` on, every checkpoint write fails as on a full disk; the checkpoint files there
    before are copied to `snapshot` first, for the test to compare."""

    def __init__(self, step: int, snapshot: str) -> None:
        self.step, self.snapshot = step, Path(snapshot)

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step != self.step:
            return
        self.snapshot.mkdir()
        for path in Path(trainer.default_root_dir, "checkpoints").glob("*.ckpt"):
            (self.snapshot / path.name).write_bytes(path.read_bytes())

        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        torch.save = no_space  # this training subprocess only


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_full_disk_during_a_save_names_the_last_good_checkpoint(disk_full_run):
    result, checkpoints, snapshot = disk_full_run
    line = assert_one_line_error(result, "No space left on device", "the last good one is")
    assert str(checkpoints / "last.ckpt") in line  # epoch 0's state, step 3 (last.ckpt and step00000003.ckpt)
    assert _digests(checkpoints) == _digests(snapshot)  # nothing rewritten, no temporary file left behind
    assert {"best.ckpt", "last.ckpt", "step00000003.ckpt"} == set(_digests(checkpoints))


def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    (tmp_path / "last.ckpt").write_bytes(b"earlier")
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EDQUOT, "Disk quota")))
    with pytest.raises(CheckpointError, match="Disk quota.*last good one is none yet"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "last.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert (tmp_path / "last.ckpt").read_bytes() == b"earlier"
