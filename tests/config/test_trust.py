"""Trust comes only from the person running the command: no `_target_` in a command line, config or checkpoint, and no
Hugging Face model folder, makes cmvl run code the user did not choose. Each attack must leave no marker file, and end
in one `cmvl: error:` line with exit 2."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from cmvl.config.targets import check_targets
from cmvl.errors import ConfigError
from cmvl.models.remote_code import refuse_remote_code, refuse_remote_config
from cmvl.run import run_config
from tests.conftest import (
    TINY_TRAINING,
    TINY_WORLD,
    assert_one_line_error,
    cli_in_process,
    load_checkpoint_file,
    run_cli,
)

USER_MODULE = "cmvl_trust_user_code"  # a user's own package, put on PYTHONPATH by the tests

USER_CODE = '''
from pathlib import Path

import pytorch_lightning as pl


class TouchAtFitStart(pl.Callback):
    """A real Lightning callback of the user's own."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_start(self, trainer, pl_module) -> None:
        Path(self.path).write_text("ran")


def touch(path: str) -> None:
    """Not a callback: a function, refused even under a trusted prefix."""
    Path(path).write_text("ran")


class NotACallback:
    def __init__(self, path: str) -> None:
        Path(path).write_text("ran")
'''


def _user_package(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{USER_MODULE}.py").write_text(textwrap.dedent(USER_CODE))
    return root


def _attacks(marker: Path) -> dict[str, list[str]]:
    """Command-line attacks: each would create `marker` if cmvl built what it names."""
    touch = f"'touch {marker}'"
    return {
        "collect_env.run": ["+callbacks.x._target_=torch.utils.collect_env.run", f"+callbacks.x.command={touch}"],
        "torch.os.system": ["+callbacks.x._target_=torch.os.system", f"+callbacks.x.command={touch}"],
        "os.system": ["fusion._target_=os.system", f"+fusion.command={touch}"],
        "builtins.eval": ["+callbacks.x._target_=builtins.eval", f"+callbacks.x._args_=[\"open('{marker}','w')\"]"],
        "posixpath.join": ["+callbacks.x._target_=posixpath.join", f"+callbacks.x._args_=['{marker}']"],
        "nested-in-task": ["+task.hook._target_=os.system", f"+task.hook.command={touch}"],
        "nested-in-encoder": [f"+vision.encoder.some_arg={{_target_:os.system,command:{touch}}}"],
        "list-element": [f"+vision.encoder.extra=[1,{{_target_:os.system,command:{touch}}}]"],
        "hydra-callback": [
            "+hydra.callbacks.x._target_=torch.utils.collect_env.run",
            f"+hydra.callbacks.x.command={touch}",
        ],
        "trusted-prefix-still-needs-a-class": [
            "extra_target_prefixes=[os]",
            "+callbacks.x._target_=os.system",
            f"+callbacks.x.command={touch}",
        ],
    }


@pytest.mark.parametrize("attack", list(_attacks(Path("m"))))
def test_a_command_line_target_that_would_run_code_is_refused(tmp_path, attack):
    marker = tmp_path / "pwned"
    result = cli_in_process("train", *_attacks(marker)[attack], "trainer=debug", cwd=tmp_path)
    assert_one_line_error(result, "_target_=")
    assert not marker.exists()


def test_the_refusal_names_the_key_the_target_and_how_to_trust_ones_own_code(tmp_path):
    result = cli_in_process("train", "+callbacks.x._target_=torch.utils.collect_env.run", cwd=tmp_path)
    assert_one_line_error(
        result, "callbacks.x._target_=torch.utils.collect_env.run", "Lightning Callback", "extra_target_prefixes=["
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_world):
    """A tiny run with the user's own callback under a prefix trusted on the command line."""
    root = tmp_path_factory.mktemp("trusted-run")
    user, marker = _user_package(root / "user"), root / "callback-ran"
    result = run_cli(
        "train",
        *TINY_WORLD,
        *TINY_TRAINING,
        f"hydra.run.dir={root / 'run'}",
        f"extra_target_prefixes=[{USER_MODULE}]",
        f"+callbacks.mine._target_={USER_MODULE}.TouchAtFitStart",
        f"+callbacks.mine.path={marker}",
        cwd=root,
        env_extra={"PYTHONPATH": str(user)},
    )
    return root, result, marker


def test_a_users_own_callback_under_a_trusted_prefix_runs(trained):
    root, result, marker = trained
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker.read_text() == "ran"
    assert (root / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("name", ["touch", "NotACallback"])
def test_a_trusted_prefix_admits_only_classes_of_the_expected_kind(tmp_path, monkeypatch, name):
    monkeypatch.syspath_prepend(str(_user_package(tmp_path / "user")))
    marker = tmp_path / "pwned"
    result = cli_in_process(
        "train",
        f"extra_target_prefixes=[{USER_MODULE}]",
        f"+callbacks.mine._target_={USER_MODULE}.{name}",
        f"+callbacks.mine.path={marker}",
        "trainer=debug",
        cwd=tmp_path,
    )
    assert_one_line_error(result, f"callbacks.mine._target_={USER_MODULE}.{name}", "Lightning Callback")
    assert not marker.exists()


def _evil_checkpoint(trained, tmp_path: Path, marker: Path, edit: str) -> Path:
    """The tiny run's real checkpoint with its saved config edited (`weights_only` loading accepts it)."""
    root, result, _ = trained
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint_file(root / "run" / "checkpoints" / "last.ckpt")
    config = checkpoint["cmvl"]["config"]
    touch = f"touch {marker}"
    if edit == "own-prefix":  # the checkpoint trusts `os` itself
        config["extra_target_prefixes"] = ["os."]
        config["fusion"] = {"_target_": "os.system", "command": touch}
    elif edit == "own-prefix-torch":
        config["extra_target_prefixes"] = ["torch."]
        config["fusion"] = {"_target_": "torch.utils.collect_env.run", "command": touch}
    elif edit == "collect_env.run":
        config["vision"]["encoder"] = {"_target_": "torch.utils.collect_env.run", "command": touch}
    elif edit == "nested-in-task":
        config["task"]["hook"] = {"_target_": "os.system", "command": touch}
    elif edit == "list-element":
        config["text"]["encoder"]["extra"] = [{"_target_": "os.system", "command": touch}]
    elif edit == "users-class-via-checkpoint":  # a class of the right kind, trusted only by the file
        config["extra_target_prefixes"] = [USER_MODULE]
        config["callbacks"] = {"mine": {"_target_": f"{USER_MODULE}.TouchAtFitStart", "path": str(marker)}}
        config["fusion"]["_target_"] = f"{USER_MODULE}.NotACallback"
        config["fusion"]["path"] = str(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    return evil


EVAL_ATTACKS = [
    "own-prefix",
    "own-prefix-torch",
    "collect_env.run",
    "nested-in-task",
    "list-element",
    "users-class-via-checkpoint",
]


@pytest.mark.parametrize("edit", EVAL_ATTACKS)
def test_eval_of_a_crafted_checkpoint_runs_nothing(trained, tmp_path, monkeypatch, edit):
    monkeypatch.syspath_prepend(str(_user_package(tmp_path / "user")))
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(trained, tmp_path, marker, edit)
    result = cli_in_process("eval", f"ckpt={evil}", cwd=tmp_path)
    assert_one_line_error(result, "_target_=")
    assert not marker.exists()


def test_eval_takes_trust_from_its_own_command_line_never_from_the_checkpoint(trained, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_user_package(tmp_path / "user")))
    checkpoint = load_checkpoint_file(trained[0] / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["cmvl"]["config"]["extra_target_prefixes"] == [USER_MODULE]  # the run trusted its callback
    with pytest.raises(ConfigError, match=f"callbacks.mine._target_={USER_MODULE}.TouchAtFitStart"):
        run_config(checkpoint, [])
    cfg = run_config(checkpoint, [f"extra_target_prefixes=[{USER_MODULE}]"])
    assert list(cfg.extra_target_prefixes) == [USER_MODULE]


def _config_with_target(location: str, target: str) -> dict:
    config: dict = {}
    node = config
    for part in location.split("."):
        node = node.setdefault(part, {})
    node["_target_"] = target
    return config


@pytest.mark.parametrize(
    ("location", "target"),
    [
        ("hydra.sweeper.sampler", "optuna.samplers.TPESampler"),
        ("optim.optimizer", "torch.optim.SGD"),
        ("logger.tb", "pytorch_lightning.loggers.TensorBoardLogger"),
        ("task.tasks.vqa", "cmvl.tasks.vqa.VQATask"),
    ],
)
def test_the_listed_library_classes_of_each_kind_are_accepted(location, target):
    check_targets(_config_with_target(location, target))


@pytest.mark.parametrize(
    ("location", "target", "message"),
    [
        ("optim.optimizer", "torch.optim.lr_scheduler.LambdaLR", "not a torch.optim.Optimizer cmvl may build"),
        ("logger.x", "pytorch_lightning.callbacks.EarlyStopping", "not a Lightning Logger cmvl may build"),
        ("fusion", "cmvl.models.vision.tiny_cnn.TinyCNNEncoder", "not a class, or not a cmvl Fusion"),
        ("callbacks.x", "cmvl.training.train.ModelCheckpoint", "not one of cmvl's own classes"),
        ("optim.scheduler", "cmvl.training.optim.WarmupCosine", "cmvl builds nothing at optim.scheduler"),
    ],
)
def test_a_class_of_the_wrong_kind_or_place_is_refused(location, target, message):
    with pytest.raises(ConfigError, match=message):
        check_targets(_config_with_target(location, target))


def _remote_code_model(root: Path, marker: Path, **config) -> Path:
    """A model folder whose config asks transformers to import its own `evil.py`, which would create `marker`."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    (root / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    return root


REMOTE_CONFIGS = {
    "auto_map": {"model_type": "bert", "auto_map": {"AutoConfig": "evil.Config", "AutoModel": "evil.Model"}},
    "unknown-model-type": {"model_type": "evil-model", "auto_map": {"AutoModel": "evil.Model"}},
}


@pytest.mark.parametrize("kind", list(REMOTE_CONFIGS))
def test_a_model_folder_that_needs_its_own_code_is_refused_in_one_line(tmp_path, tiny_world, kind):
    marker = tmp_path / "pwned"
    model = _remote_code_model(tmp_path / "model", marker, **REMOTE_CONFIGS[kind])
    result = cli_in_process(
        "train", *TINY_WORLD, "trainer=debug", "text=hf", f"text.encoder.name={model}", cwd=tmp_path
    )
    assert_one_line_error(result, f"{model}: config.json", "own Python code")
    assert not marker.exists()


def test_every_model_loader_refuses_remote_code(tmp_path):
    marker = tmp_path / "pwned"
    model = _remote_code_model(tmp_path / "model", marker, **REMOTE_CONFIGS["auto_map"])
    from cmvl.data.text import PretrainedTokenizer
    from cmvl.models.pretrained_decoder import lm_config
    from cmvl.models.vision.pretrained_vision import HFVisionEncoder

    loaders = [
        lambda: HFVisionEncoder(name=str(model), pretrained=False),
        lambda: PretrainedTokenizer(name=str(model)).build([]),
        lambda: lm_config(str(model), "prefix"),
    ]
    for load in loaders:
        with pytest.raises(ConfigError, match="own Python code"):
            load()
    with pytest.raises(ConfigError, match="checkpoint's task.lm config"):
        refuse_remote_config(REMOTE_CONFIGS["unknown-model-type"], "the checkpoint's task.lm config")
    assert not marker.exists()


def test_a_model_folder_transformers_ships_the_code_for_passes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    refuse_remote_code(str(tmp_path), "text.encoder.name")


def _code_channel_attacks(marker: Path) -> dict[str, list[str]]:
    """Command-line attacks through the two other channels that import or call code: `logging.config`'s importing
    keys in Hydra's logging settings, and Hydra's instantiate keywords."""
    popen = f"{{class:subprocess.Popen,args:'touch {marker}',shell:true}}"
    return {
        "job-logging-handler-dict": [f"+hydra.job_logging.handlers.evil={popen}"],
        "hydra-logging-handler-dict": [f"+hydra.hydra_logging.handlers.evil={popen}"],
        "job-logging-unknown-class": ["hydra.job_logging.handlers.file.class=logging.NoSuchHandler"],
        "formatter-factory": ["+hydra.job_logging.formatters.simple.factory=subprocess.getoutput"],
        "filter-factory": [f"+hydra.job_logging.filters={{evil:{{class:subprocess.Popen,args:'touch {marker}'}}}}"],
        "ext-stream": ["hydra.job_logging.handlers.console.stream=ext://subprocess.PIPE"],
        "args-on-task": ["+task._args_=[1]"],
        "partial-on-task": ["+task._partial_=true"],
        "recursive-on-encoder": ["+vision.encoder._recursive_=false"],
        "convert-nested": ["+fusion.extra={_convert_:all}"],
        "optimizer-partial-other-value": ["optim.optimizer._partial_=false"],
        "optimizer-args": ["+optim.optimizer._args_=[1]"],
    }


@pytest.mark.parametrize("attack", list(_code_channel_attacks(Path("m"))))
def test_logging_classes_and_instantiate_keywords_from_the_command_line_are_refused(tmp_path, attack):
    marker, run_dir = tmp_path / "pwned", tmp_path / "run"
    overrides = _code_channel_attacks(marker)[attack]
    result = cli_in_process("train", *TINY_WORLD, "trainer=debug", f"hydra.run.dir={run_dir}", *overrides, cwd=tmp_path)
    key = overrides[0].lstrip("+").partition("=")[0]
    assert_one_line_error(result, key)
    assert not marker.exists()
    assert not run_dir.exists()


@pytest.mark.parametrize("choice", ["default", "disabled", "none", "stdout"])
def test_hydras_shipped_logging_choices_and_the_optimizers_partial_pass(choice):
    from cmvl.config.compose import compose_config

    cfg = compose_config([f"hydra/job_logging={choice}"], config_name="train", return_hydra_config=True)
    assert cfg.optim.optimizer._partial_ is True
    check_targets(cfg)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"task": {"_partial_": True}}, "task._partial_=True"),
        ({"task": {"tasks": {"vqa": {"_args_": [1]}}}}, r"task.tasks.vqa._args_=\[1\]"),
        ({"optim": {"optimizer": {"_partial_": "true"}}}, "optim.optimizer._partial_=true"),
        ({"hydra": {"job_logging": {"handlers": {"x": {"()": "os.system"}}}}}, r"hydra.job_logging.handlers.x.\(\)"),
    ],
)
def test_a_checkpoints_config_is_held_to_the_same_keywords_and_logging_classes(config, message):
    with pytest.raises(ConfigError, match=message):
        check_targets(config)


def test_eval_of_a_checkpoint_with_an_instantiate_keyword_is_refused(trained, tmp_path):
    checkpoint = load_checkpoint_file(trained[0] / "run" / "checkpoints" / "last.ckpt")
    checkpoint["cmvl"]["config"]["task"]["_args_"] = [1]
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    result = cli_in_process("eval", f"ckpt={evil}", cwd=tmp_path)
    assert_one_line_error(result, "task._args_=[1]")
