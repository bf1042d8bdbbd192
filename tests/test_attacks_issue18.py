"""Attacks on what issue 18 added (cmvl.load_run, init_from, $CMVL_CONFIG_DIR, the key=value command lines): each
bad input is one line (or a clear exception from the Python API), writes nothing and runs nothing nobody chose."""

from __future__ import annotations

import sys

import pytest
import torch

from cmvl.errors import CheckpointError, ConfigError
from tests.conftest import assert_one_line_error, cli_in_process


def test_a_config_file_cannot_trust_packages(tmp_path, monkeypatch):
    """An `experiment=` recipe of the user's folder that sets extra_target_prefixes (a `# @package _global_` file)
    would make cmvl import that package: trust comes from the command line only, so it is refused before anything
    is imported; the same package trusted on the command line is the user's choice."""
    code = tmp_path / "code" / "lab_code"
    code.mkdir(parents=True)
    marker = tmp_path / "imported"
    (code / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Fusion:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "trusting.yaml").write_text(
        "# @package _global_\nextra_target_prefixes: [lab_code]\nfusion:\n  _target_: lab_code.Fusion\n"
    )
    monkeypatch.setenv("CMVL_CONFIG_DIR", str(tmp_path / "conf"))
    result = cli_in_process("train", "experiment=trusting", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(result, "extra_target_prefixes=[lab_code]", "config file", "command line")
    assert not marker.exists() and "lab_code" not in sys.modules
    assert not (tmp_path / "run").exists()
    # Trusted on the command line, the package is imported (and its class, not a Fusion, is refused in one line).
    result = cli_in_process(
        "train",
        "experiment=trusting",
        "extra_target_prefixes=[lab_code]",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert_one_line_error(result, "fusion._target_=lab_code.Fusion")
    assert marker.exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"layers: [1, 2\n", "is not readable YAML (line 2, column 1"),
        (b"\xff\xfe\x00 binary", "is not readable YAML"),
        (b"- 1\n- 2\n", "holds a list, not a mapping"),
        (b"just words\n", "holds a str, not a mapping"),
    ],
)
def test_an_unreadable_file_in_the_user_config_folder_is_one_line(tmp_path, monkeypatch, content, needle):
    (tmp_path / "conf" / "fusion").mkdir(parents=True)
    (tmp_path / "conf" / "fusion" / "mine.yaml").write_bytes(content)
    monkeypatch.setenv("CMVL_CONFIG_DIR", str(tmp_path / "conf"))
    for args in (["fusion=mine"], []):  # chosen or not: Hydra would fail on it with a traceback once chosen
        result = cli_in_process("train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
        assert_one_line_error(result, "CMVL_CONFIG_DIR:", "mine.yaml", needle)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_whose_weights_have_names_that_are_not_strings_is_refused(finished_tiny_run, tmp_path):
    import cmvl
    from cmvl.training.init_from import read_initial_weights

    checkpoint = torch.load(finished_tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["state_dict"][5] = torch.zeros(1)
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    with pytest.raises(CheckpointError, match="state_dict has a key 5 that is not a weight's name"):
        cmvl.load_run(crafted)
    with pytest.raises(CheckpointError, match="state_dict has a key 5"):
        read_initial_weights(crafted)


def test_load_run_refuses_arguments_of_the_wrong_shape(tmp_path):
    import cmvl

    ckpt = tmp_path / "x.ckpt"
    with pytest.raises(TypeError, match="overrides must be a list of 'key=value' strings"):
        cmvl.load_run(ckpt, overrides="task.beam_size=5")  # read one character at a time before
    with pytest.raises(TypeError, match="overrides must be 'key=value' strings, not int"):
        cmvl.load_run(ckpt, overrides=[5])
    with pytest.raises(TypeError, match="path must be a str or pathlib.Path"):
        cmvl.load_run(None)
    with pytest.raises(ConfigError, match="path is empty"):
        cmvl.load_run("")  # was the current folder, "checkpoint not found: ."
    for bad in ("=5", ""):
        with pytest.raises(ConfigError, match="is not key=value"):
            cmvl.load_run(ckpt, overrides=[bad])


def test_empty_paths_of_cmvl_eval_are_one_line(tmp_path):
    assert_one_line_error(cli_in_process("eval", "ckpt=", cwd=tmp_path), "eval: ckpt=: must be a path")
    result = cli_in_process("eval", f"ckpt={tmp_path / 'x.ckpt'}", "out=", cwd=tmp_path)
    assert_one_line_error(result, "eval: out=: must be a path")


@pytest.mark.parametrize("flag", ["--nope", "--max-epochs=3", "-x"])
def test_an_unknown_flag_of_cmvl_train_is_one_line(tmp_path, flag):
    result = cli_in_process("train", flag, cwd=tmp_path)
    assert_one_line_error(result, f"train: unknown flag {flag}", "key=value")
    assert "usage: train_job.py" not in result.stderr + result.stdout


def test_init_from_is_checked_before_the_run_starts(tmp_path):
    """A missing file, a folder, or a checkpoint inside the run's own folder (overwrite=true would delete it before
    it is read): one line, before the run directory exists or anything in it is touched."""
    run = tmp_path / "run"
    cases = [
        (tmp_path / "missing.ckpt", "checkpoint not found"),
        (tmp_path, "a folder, not a checkpoint file"),
    ]
    for init, needle in cases:
        result = cli_in_process("train", f"init_from={init}", f"hydra.run.dir={run}", cwd=tmp_path)
        assert_one_line_error(result, f"init_from={init}", needle)
        assert not run.exists()
    (run / "checkpoints").mkdir(parents=True)
    own = run / "checkpoints" / "best.ckpt"
    own.write_bytes(b"an earlier run's checkpoint")
    result = cli_in_process("train", f"init_from={own}", "overwrite=true", f"hydra.run.dir={run}", cwd=tmp_path)
    assert_one_line_error(result, f"init_from={own}", "inside this run's own folder")
    assert own.read_bytes() == b"an earlier run's checkpoint"
    assert sorted(p.name for p in run.rglob("*")) == ["best.ckpt", "checkpoints"]
