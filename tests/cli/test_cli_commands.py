"""One table of commands (usage, dispatch, unknown-command line) and one argument style (key=value) for all."""

from __future__ import annotations

import importlib
import re

import pytest

from cmvl.cli.args import HYDRA_QUOTING_RULE, QUOTING_RULE, REQUIRED, Spec
from cmvl.cli.commands import COMMANDS
from tests.conftest import REPO, assert_one_line_error, cli_in_process


def _spec(name: str) -> Spec | None:
    """The `Spec` a command's module declares for it (None: `train`, which takes Hydra overrides)."""
    module = importlib.import_module(next(c for c in COMMANDS if c.name == name).target.partition(":")[0])
    specs = [v for v in vars(module).values() if isinstance(v, Spec) and v.command == name]
    assert len(specs) <= 1
    return specs[0] if specs else None


OWN_ARGUMENTS = [c.name for c in COMMANDS if c.name != "train"]


def test_usage_shows_every_command_of_the_table(tmp_path):
    result = cli_in_process("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in COMMANDS:
        assert f"  {command.name} {command.usage}" in result.stdout and command.summary in result.stdout
    assert QUOTING_RULE in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 120


def test_every_row_of_the_table_reaches_a_function():
    for command in COMMANDS:
        assert callable(command.load()), command.name


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_every_help_states_the_quoting_rule_and_verbosity(tmp_path, name):
    result = cli_in_process(*name.split(), "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert (HYDRA_QUOTING_RULE if name == "train" else QUOTING_RULE) in result.stdout
    assert "verbosity=quiet|info|debug" in result.stdout


@pytest.mark.parametrize("name", OWN_ARGUMENTS)
def test_the_table_usage_agrees_with_the_command_keys(name):
    spec = _spec(name)
    usage = next(c.usage for c in COMMANDS if c.name == name)
    keys = {o.key for o in spec.all_options}
    shown = set(re.findall(r"\b([a-z_]+)=", usage)) - {"key"}
    assert shown <= keys, shown - keys
    assert {o.key for o in spec.options if o.default is REQUIRED} <= shown
    assert ("[key=value ...]" in usage) == bool(spec.overrides)
    assert spec.help().startswith(f"usage: cmvl {name} ")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["trian"], ["unknown command 'trian'", "did you mean 'train'", "(commands: train, eval, ", " predict, "]),
        (["data", "shapse"], ["unknown command 'data shapse'", "did you mean 'data shapes'", "shapes, info, prepare"]),
        (["sweep", "reprot"], ["did you mean 'sweep report'"]),
        (["data"], ["cmvl data needs one of: shapes, info, prepare"]),
        (["frobnicate"], ["unknown command 'frobnicate'", "commands: train, eval"]),
    ],
)
def test_an_unknown_command_is_one_line_with_the_nearest_names(tmp_path, args, needles):
    assert_one_line_error(cli_in_process(*args, cwd=tmp_path), *needles)


def test_a_group_without_its_command_name_lists_its_commands(tmp_path):
    result = cli_in_process("data", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert all(f"data {word} " in result.stdout for word in ("shapes", "info", "prepare"))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (["data", "shapes", "--out", "W", "--images", "8"], "write: cmvl data shapes out=W images=8"),
        (["data", "shapes", "--out=W", "--questions-per-image", "2"], "cmvl data shapes out=W questions_per_image=2"),
        (
            ["data", "prepare", "--out", "W", "--size", "64", "dataset=vqa_v2"],
            "data prepare out=W size=64 dataset=vqa_v2",
        ),
        (["plot", "runs/a"], "write: cmvl plot run=runs/a"),
        (["plot", "multirun/x/fusion=concat", "--out", "c.png"], "cmvl plot run=multirun/x/fusion=concat out=c.png"),
        (["sweep", "report", "multirun/s"], "write: cmvl sweep report dir=multirun/s"),
        (["data", "shapes", "--out", "my world"], "cmvl data shapes out='my world'"),
    ],
)
def test_the_old_flag_and_positional_style_is_refused_with_the_new_spelling(tmp_path, old, new):
    line = assert_one_line_error(cli_in_process(*old, cwd=tmp_path), "is the old spelling", new)
    assert "Traceback" not in line
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["data", "shapes", "out=W", "imgs=8"], ["unknown key 'imgs'", "out, images, questions_per_image", "images=?"]),
        (["data", "shapes", "out=W", "images=many"], ["images=many: must be an integer >= 1"]),
        (["data", "shapes", "out=W", "images=0"], ["images=0: must be an integer >= 1"]),
        (["data", "shapes", "out=W", "size=8"], ["size=8: must be an integer >= 16"]),
        (["data", "shapes", "images=8"], ["missing out=DIR"]),
        (["data", "shapes", "out=W", "out=V"], ["out= given twice"]),
        (["data", "shapes", "out=W", "--verbose"], ["takes key=value arguments, not --verbose"]),
        (["data", "prepare", "out=W", "quality=101"], ["quality=101: must be an integer in [1, 100]"]),
        (["plot", "run=R", "colour=red"], ["unknown key 'colour'", "keys: run, out, verbosity"]),
        (["eval"], ["missing ckpt=PATH"]),
        (["eval", "ckpt=a.ckpt", "foo"], ["expected key=value, got 'foo'"]),
        (["sweep", "report", "dir=S", "verbosity=loud"], ["verbosity=loud: must be one of quiet, info, debug"]),
    ],
)
def test_a_bad_argument_is_one_line_naming_the_keys(tmp_path, args, needles):
    assert_one_line_error(cli_in_process(*args, cwd=tmp_path), *needles)
    assert list(tmp_path.iterdir()) == []


def test_a_value_with_spaces_is_one_argument_and_quotes_inside_it_are_removed(tmp_path, cache_dir):
    spaced = tmp_path / "my world"
    result = cli_in_process("data", "shapes", f"out={spaced}", "images=2", "size=16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (spaced / "shapes.json").is_file() and f"shapes world written to {spaced}" in result.stdout
    quoted = tmp_path / "a, b"
    result = cli_in_process("data", "shapes", f'out="{quoted}"', "images=2", "size=16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (quoted / "shapes.json").is_file()


def test_verbosity_quiet_leaves_out_the_progress_lines(tmp_path, cache_dir):
    loud = cli_in_process("data", "shapes", f"out={tmp_path / 'a'}", "images=2", "size=16", cwd=tmp_path)
    assert "cmvl: shapes: rendering train 2/2" in loud.stderr
    quiet = cli_in_process(
        "data", "shapes", f"out={tmp_path / 'b'}", "images=2", "size=16", "verbosity=quiet", cwd=tmp_path
    )
    assert quiet.returncode == 0 and quiet.stderr == "" and "shapes world written" in quiet.stdout


def test_train_refuses_a_bad_verbosity_before_anything_runs(tmp_path):
    result = cli_in_process("train", "verbosity=loud", cwd=tmp_path)
    assert_one_line_error(result, "verbosity=loud", "quiet, info, debug")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags", [["--cfg", "job"], ["--cfg=job"], ["-c", "job", "-p", "model"]])
def test_train_cfg_prints_the_composed_config_with_the_flag_value_apart_or_joined(tmp_path, flags):
    result = cli_in_process("train", *flags, "model.dim=96", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dim: 96" in result.stdout and "cmvl: error" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # printing the config starts no run


def test_train_cfg_with_a_sweep_is_one_line(tmp_path):
    result = cli_in_process("train", "--cfg", "job", "-m", "fusion=concat,attention", cwd=tmp_path)
    assert_one_line_error(result, "--cfg", "leave -m out")
    assert list(tmp_path.iterdir()) == []


def _readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"\n## Commands\n.*?```bash\n(.*?)```", readme, re.S) or re.search(
        r"\n### Commands\n.*?```bash\n(.*?)```", readme, re.S
    )
    assert block, "README has no Commands section with a bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.startswith("cmvl ")]


def test_the_readme_commands_block_shows_every_command_in_the_key_value_style():
    lines = _readme_commands()
    for command in COMMANDS:
        assert any(line == f"cmvl {command.name}" or line.startswith(f"cmvl {command.name} ") for line in lines), (
            command.name
        )
    names = {c.name for c in COMMANDS}
    for line in lines:
        words = line.split()
        assert words[1].startswith("-") or words[1] in names or " ".join(words[1:3]) in names, line
        flags = [w for w in words[2:] if w.startswith("-") and w.rstrip(";") not in ("-h", "--help")]
        assert line.startswith("cmvl train") or not flags, line  # train's -m is Hydra's; the rest are key=value
