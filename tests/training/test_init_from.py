"""`init_from=PATH`: a new run that starts from another run's model weights (non-strict, the skipped and reshaped
weights listed), restoring nothing else; refused with a resume that continues a run, and for bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cmvl.errors import CheckpointError, ConfigError
from cmvl.log import configure
from cmvl.training.init_from import InitialWeights, check_init_with_resume, group_names, load_initial_weights
from tests.conftest import (
    TINY_TRAINING,
    TINY_WORLD,
    TINY_WORLD_ANY_TASK,
    assert_one_line_error,
    cli_in_process,
    load_checkpoint_file,
)


@pytest.fixture(scope="module")
def source(finished_tiny_run) -> Path:
    return finished_tiny_run / "checkpoints" / "best.ckpt"


class _Toy(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.head = nn.Linear(4, classes)
        self.new = nn.Linear(4, 2)


def _initial(weights: dict[str, torch.Tensor]) -> InitialWeights:
    return InitialWeights(path=Path("src.ckpt"), weights=weights, config={}, tokenizer_state="")


def test_fitting_weights_load_and_the_others_are_listed(capsys):
    configure("info")  # as the CLI does: cmvl's lines on stderr
    source, model = _Toy(classes=3), _Toy(classes=5)
    weights = {k: v for k, v in source.state_dict().items() if not k.startswith("new.")}
    weights["old.weight"] = torch.ones(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_initial_weights(model, _initial(weights))
    now = model.state_dict()
    assert report.loaded == sorted(k for k in weights if k.startswith("body."))
    assert all(torch.equal(now[k], weights[k]) for k in report.loaded)
    assert report.reshaped == [("head.bias", (3,), (5,)), ("head.weight", (3, 4), (5, 4))]
    assert report.missing == ["new.bias", "new.weight"] and report.unexpected == ["old.weight"]
    assert all(torch.equal(now[k], before[k]) for k in ("head.weight", "head.bias", "new.weight"))  # as initialised
    err = capsys.readouterr().err
    assert "4 of this model's 8 weights loaded" in err
    assert "head.weight ([3, 4] there, [5, 4] here)" in err and "new.* (2 weights)" in err and "old.*" in err


def test_nothing_fitting_is_refused():
    with pytest.raises(CheckpointError, match="none of its 1 weights fits"):
        load_initial_weights(_Toy(3), _initial({"other.weight": torch.ones(2)}))


def test_group_names_collapse_whole_modules_only():
    names = ["a.x.w", "a.x.b", "a.y.w", "c.w"]
    assert group_names(["a.x.w", "a.x.b"], names) == [("a.x.*", 2)]
    assert group_names(["a.x.w", "a.y.w"], names) == [("a.x.w", 1), ("a.y.*", 1)]
    assert group_names(["c.w"], names) == [("c.*", 1)]


def test_init_from_with_a_resume_that_continues_another_run_is_refused():
    cfg = OmegaConf.create({"init_from": "a.ckpt"})
    started_from = {"cmvl": {"config": {"init_from": "a.ckpt"}}}
    check_init_with_resume(cfg, Path("last.ckpt"), started_from)  # the same run, continued (a requeued job)
    check_init_with_resume(cfg, None, None)  # nothing to resume: a new run from a.ckpt
    for config in ({"init_from": "b.ckpt"}, {}):
        with pytest.raises(ConfigError, match="init_from=a.ckpt: resume continues the run of last.ckpt"):
            check_init_with_resume(cfg, Path("last.ckpt"), {"cmvl": {"config": config}})


def test_a_new_run_starts_from_the_weights_and_nothing_else(source, tmp_path):
    """Another answer vocabulary (task.top_k=5): the VQA head is reshaped and left as initialised, every
    other weight starts at the source's (a learning rate of 1e-12 keeps them there through one step); the step,
    optimizer and task state are the new run's own; the tokenizer is the source's (the same text.tokenizer)."""
    run_dir = tmp_path / "new"
    result = cli_in_process(
        "train",
        *TINY_WORLD_ANY_TASK,
        *TINY_TRAINING,
        "task.top_k=5",  # the five most frequent answers: another vocabulary, a head of another shape
        "optim.optimizer.lr=1e-12",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        f"init_from={source}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"init_from {source}: " in result.stderr and "skipped, another shape" in result.stderr
    assert "heads.vqa." in result.stderr and f"the tokenizer of {source}" in result.stderr
    old, new = load_checkpoint_file(source), load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    assert new["global_step"] == 1 and new["epoch"] == 0
    assert all(int(s["step"]) == 1 for s in new["optimizer_states"][0]["state"].values())
    assert new["cmvl"]["data_state"]["task"] != old["cmvl"]["data_state"]["task"]  # its own answer vocabulary
    assert new["cmvl"]["data_state"]["tokenizer"] == old["cmvl"]["data_state"]["tokenizer"]
    assert new["cmvl"]["config"]["init_from"] == str(source)
    reshaped = [k for k, v in old["state_dict"].items() if new["state_dict"][k].shape != v.shape]
    assert reshaped and all(k.startswith("model.heads.vqa.") for k in reshaped)
    for key, value in old["state_dict"].items():
        if key not in reshaped and value.is_floating_point() and "running_" not in key:  # BatchNorm statistics move
            assert torch.allclose(new["state_dict"][key], value, atol=1e-6), key


def test_bad_init_from_files_are_one_line(source, tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": _RunsCodeOnLoad(str(marker)), "cmvl": {}}, crafted)
    cases = {
        tmp_path / "nope.ckpt": "checkpoint not found",
        garbage: "not a readable checkpoint",
        crafted: "not a readable checkpoint",
        tmp_path: "a folder, not a checkpoint file",
    }
    for i, (path, needle) in enumerate(cases.items()):
        result = cli_in_process(
            "train", *TINY_WORLD, f"init_from={path}", f"hydra.run.dir={tmp_path / f'run{i}'}", cwd=tmp_path
        )
        assert_one_line_error(result, needle)
    assert not marker.exists()
    result = cli_in_process("train", "init_from=''", cwd=tmp_path)
    assert_one_line_error(result, "init_from")


def test_init_from_with_resume_of_another_run_exits_2(source, tmp_path):
    result = cli_in_process(
        "train",
        *TINY_WORLD,
        *TINY_TRAINING,
        f"resume={source}",
        f"init_from={source}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert_one_line_error(result, "resume continues the run of", "drop init_from")


class _RunsCodeOnLoad:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
