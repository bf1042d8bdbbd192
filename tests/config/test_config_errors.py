"""Every config and path mistake ends in one `cmvl: error:` line, exit 2, before anything is written (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import assert_one_line_error, cli_in_process

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens on a machine without a GPU")

# (overrides, words the error line must contain). Each kind of mistake has at least two cases.
VALUE_CASES = [
    # values passed on to Lightning / torch
    (["trainer.max_epochs=-3"], ["trainer.max_epochs=-3", "positive integer", "-1"]),
    (["trainer.max_epochs=abc"], ["trainer.max_epochs=abc"]),
    (["trainer.max_steps=0"], ["trainer.max_steps=0"]),
    (["optim.optimizer.lr=-0.1"], ["optim.optimizer.lr=-0.1", "> 0"]),
    (["optim.optimizer.lr=fast"], ["optim.optimizer.lr=fast"]),
    (["seed=-5"], ["seed=-5", "4294967295"]),
    (["seed=4294967296"], ["seed="]),
    (["seed=1.5"], ["seed=1.5"]),
    (["trainer.limit_train_batches=1.5"], ["trainer.limit_train_batches=1.5", "share"]),
    (["trainer.limit_val_batches=-2"], ["trainer.limit_val_batches=-2"]),
    (["trainer.gradient_clip_val=-1"], ["trainer.gradient_clip_val=-1", ">= 0"]),
    (["trainer.gradient_clip_val=big"], ["trainer.gradient_clip_val=big"]),
    (["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0"]),
    (["+trainer.val_check_interval=1.5"], ["trainer.val_check_interval=1.5"]),
    (["trainer.num_sanity_val_steps=-2"], ["trainer.num_sanity_val_steps=-2"]),
    (["trainer.strategy=ddpp"], ["trainer.strategy=ddpp", "ddp_spawn"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", "null for the task's default budget"]),
    (["task.epochs=5"], ["task.epochs", "no such config key"]),  # the budget is the Task class's (Task.epochs)
    (["data.num_workers=-1"], ["data.num_workers=-1"]),
    (["optim.optimizer.betas=[0.9]"], ["optim.optimizer.betas"]),
    # dropout
    (["model.dropout=1.5"], ["model.dropout=1.5", "[0, 1)"]),
    (["fusion.dropout=-0.1"], ["fusion.dropout=-0.1"]),
    (["fusion=concat", "model.dropout=x"], ["model.dropout=x"]),
    # widths the attention heads do not divide
    (["model.dim=30"], ["model.dim=30", "fusion.heads=4", "32"]),
    (["fusion=merged", "fusion.heads=5"], ["model.dim=128", "fusion.heads=5"]),
    (["text.encoder.heads=3"], ["text.encoder.hidden_size=128", "text.encoder.heads=3"]),
    (["task=caption", "task.heads=3"], ["model.dim=128", "task.heads=3"]),
    (["task=vqa", "task.answer_mode=generate", "task.decoder_heads=5"], ["task.decoder_heads=5"]),
    (["task=multitask", "task.tasks.caption.heads=3"], ["task.tasks.caption.heads=3"]),
    # devices against the machine (2 CPU cores here; any machine has fewer than 9999)
    (["trainer.accelerator=cpu", "trainer.devices=9999"], ["trainer.devices=9999", "CPU cores"]),
    (["trainer.accelerator=cpu", "trainer.devices=[0,1]"], ["trainer.devices=[0, 1]", "CPU"]),
    (["trainer.devices=0"], ["trainer.devices=0"]),
    (["trainer.accelerator=cpu", "trainer.devices=-1"], ["trainer.devices=-1", "CPU cores"]),
    (["trainer=cpu", "trainer.devices='-1'"], ["trainer.devices=-1", "give a count"]),
    # accelerators this machine does not have (the GPU ones: GPU_CASES)
    (["trainer.accelerator=tpu"], ["trainer.accelerator=tpu", "no TPU"]),
    (["trainer.accelerator=hpu"], ["trainer.accelerator=hpu", "cpu"]),
    # keys added under trainer. are Trainer arguments, checked like the shipped ones
    (["+trainer.fast_dev_run=-1"], ["trainer.fast_dev_run=-1", ">= 0"]),
    (["+trainer.fast_dev_run=often"], ["trainer.fast_dev_run=often"]),
    (["+trainer.max_time=garbage"], ["trainer.max_time=garbage", "DD:HH:MM:SS"]),
    (["+trainer.max_time={weeks:1}"], ["trainer.max_time=", "days/hours"]),
    (["+trainer.profiler=fancy"], ["trainer.profiler=fancy", "simple"]),
    (["+trainer.detect_anomaly=maybe"], ["trainer.detect_anomaly=maybe"]),
    (["+trainer.reload_dataloaders_every_n_epochs=-1"], ["trainer.reload_dataloaders_every_n_epochs=-1"]),
    (["+trainer.enable_checkpointing=false"], ["trainer.enable_checkpointing=false"]),
    (["+trainer.barebones=true"], ["trainer.barebones=true"]),
    (["+trainer.max_epoch=3"], ["trainer.max_epoch", "not an argument", "max_epochs"]),
    (["+trainer.bogus=1"], ["trainer.bogus", "not an argument"]),
    (["+trainer.default_root_dir=elsewhere"], ["trainer.default_root_dir", "hydra.run.dir"]),
    (["+trainer.logger=false"], ["trainer.logger", "logger="]),
    # data.image.* (they follow vision.* unless set directly)
    (["data.image.size=-3"], ["data.image.size=-3", "positive integer"]),
    (["data.image.size=big"], ["data.image.size=big"]),
    (["data.image.mean=[a,b,c]"], ["data.image.mean=", "3 values"]),
    (["data.image.mean=[0.5,0.5]"], ["data.image.mean="]),
    (["data.image.std=[0.2,0,0.2]"], ["data.image.std=", "> 0"]),
    (["data.image.std=[0.2,-1,0.2]"], ["data.image.std="]),
    # a key another dataset takes (a recipe's, kept after dataset=...) is not an argument of this one's Source
    (["+dataset.split_scheme=karpathy"], ["dataset.split_scheme", "dataset=shapes has no such setting", "num_images"]),
    # Hydra's override parser
    (["question=What's"], ["question=What's", 'question="What\'s"']),
    (["model.dim=[1,2"], ["model.dim=[1,2", "quote"]),
    (["data.image={a:1"], ["data.image={a:1", "quote"]),
    (["model.dim='${foo'"], ["model.dim=", 'model.dim="\\${foo"']),
    (["data.batch_size=${oops"], ["data.batch_size=${oops", "interpolation"]),
]
GPU_CASES = [
    (["trainer.accelerator=gpu"], ["trainer.accelerator=gpu", "no CUDA GPU", "cpu"]),
    (["trainer=gpu"], ["trainer.accelerator=gpu"]),
    (["trainer.accelerator=cuda", "trainer.devices=2"], ["trainer.accelerator=cuda"]),
    (["trainer.precision=16-mixed"], ["trainer.precision=16-mixed", "bf16-mixed"]),
    (["trainer.accelerator=cpu", "trainer.precision=16"], ["trainer.precision=16", "bf16-mixed"]),
    (["trainer.devices=99"], ["trainer.devices=99", "at most"]),
]


def _contents(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def _train_refused(tmp_path: Path, overrides: list[str], needles: list[str]) -> None:
    before = _contents(tmp_path)
    run_dir = tmp_path / "run"
    result = cli_in_process("train", *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert_one_line_error(result, *needles)
    assert not run_dir.exists()
    assert _contents(tmp_path) == before


@pytest.mark.parametrize(("overrides", "needles"), VALUE_CASES, ids=lambda v: " ".join(v) if v else "")
def test_a_bad_value_is_one_line_before_anything_runs(tmp_path, cache_dir, overrides, needles):
    _train_refused(tmp_path, overrides, needles)


@NO_GPU
@pytest.mark.parametrize(("overrides", "needles"), GPU_CASES, ids=lambda v: " ".join(v) if v else "")
def test_what_the_machine_lacks_is_one_line(tmp_path, cache_dir, overrides, needles):
    _train_refused(tmp_path, overrides, needles)


def test_a_sweep_value_is_checked_like_a_single_value(tmp_path, cache_dir):
    _train_refused(tmp_path, ["-m", "trainer.max_epochs=2,-3"], ["trainer.max_epochs=-3"])


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


# Folders that cannot be written even by root (which ignores permission bits): below a file, a file itself, /proc.
UNWRITABLE = [
    (lambda file: file / "sub", "is a file"),
    (lambda file: file, "is a file"),
    (lambda file: Path("/proc/cmvl-test/run"), "not writable"),
]


@pytest.mark.parametrize(("folder", "reason"), UNWRITABLE)
@pytest.mark.parametrize("setting", ["hydra.run.dir", "paths.output_dir", "checkpoint.dirpath"])
def test_an_unwritable_run_directory_is_one_line(tmp_path, cache_dir, a_file, folder, reason, setting):
    path = folder(a_file)
    before = _contents(tmp_path)
    result = cli_in_process("train", f"{setting}={path}", cwd=tmp_path)
    assert_one_line_error(result, f"{setting}={path}", reason)
    assert _contents(tmp_path) == before


def test_the_checkpoint_folder_follows_the_run_directory(tmp_path, cache_dir, a_file):
    """checkpoint.dirpath (by default under paths.output_dir, Hydra's runtime dir) is probed where the run will be."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the default checkpoint folder goes")
    before = _contents(tmp_path)
    result = cli_in_process("train", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert_one_line_error(result, f"checkpoint.dirpath={run_dir / 'checkpoints'}", "is a file")
    result = cli_in_process(
        "train", f"hydra.run.dir={run_dir}", "checkpoint.dirpath=${paths.output_dir}/checkpoints/x", cwd=tmp_path
    )
    assert_one_line_error(result, f"checkpoint.dirpath={run_dir / 'checkpoints' / 'x'}", "is a file")
    assert _contents(tmp_path) == before


def test_trainer_arguments_without_a_rule_pass(tmp_path, cache_dir):
    from cmvl.config.preflight import preflight

    run = f"hydra.run.dir={tmp_path / 'run'}"
    preflight(["+trainer.max_time=00:01:00:00", "+trainer.fast_dev_run=2", "+trainer.overfit_batches=0.5", run])
    preflight(["+trainer.max_time={hours:1,minutes:30}", "+trainer.profiler=simple", "+trainer.barebones=false", run])
    preflight(["+trainer.enable_model_summary=false", "trainer.requeue=true", run])
    assert not (tmp_path / "run").exists()


def test_an_unwritable_sweep_directory_is_one_line(tmp_path, cache_dir, a_file):
    result = cli_in_process("train", "-m", "seed=0,1", f"hydra.sweep.dir={a_file / 'sweep'}", cwd=tmp_path)
    assert_one_line_error(result, "hydra.sweep.dir=", "is a file")


@pytest.mark.parametrize(("folder", "reason"), UNWRITABLE)
def test_an_unwritable_cache_directory_is_one_line(tmp_path, cache_dir, a_file, monkeypatch, folder, reason):
    monkeypatch.setenv("CMVL_CACHE_DIR", str(folder(a_file)))
    result = cli_in_process("train", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(result, "CMVL_CACHE_DIR=", reason)
    assert not (tmp_path / "run").exists()
    result = cli_in_process("data", "info", cwd=tmp_path)
    assert_one_line_error(result, "CMVL_CACHE_DIR=", reason)


@pytest.mark.parametrize(("folder", "reason"), UNWRITABLE)
def test_an_unwritable_output_folder_of_eval_and_data_is_one_line(tmp_path, cache_dir, a_file, folder, reason):
    out = folder(a_file)
    before = _contents(tmp_path)
    for args, setting in [
        (["eval", f"ckpt={tmp_path / 'some.ckpt'}", f"out={out}"], f"out={out}"),
        (["data", "shapes", f"out={out}", "images=2"], f"out={out}"),
        (["data", "prepare", f"out={out}"], f"out={out}"),
    ]:
        assert_one_line_error(cli_in_process(*args, cwd=tmp_path), setting, reason)
    assert _contents(tmp_path) == before


@pytest.fixture
def hub_unreachable(monkeypatch):
    """A hub that cannot be reached (as in any test: no network), without waiting for a connection to time out."""
    from cmvl.models import pretrained

    monkeypatch.setattr(pretrained, "_hub_reachable", lambda endpoint: False)


@pytest.fixture
def hub_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("hub", ["hub_unreachable", "hub_offline"])
@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (["text=bert_base"], "text.encoder.name=bert-base-uncased"),
        (["text=hf", "text.encoder.name=cmvl-test/no-such-model", "text.encoder.pretrained=false"], "cmvl-test/"),
        (["vision=hf", "vision.encoder.name=cmvl-test/no-such-vit"], "vision.encoder.name=cmvl-test/no-such-vit"),
    ],
)
def test_a_hub_model_that_cannot_be_downloaded_is_one_line(request, tmp_path, cache_dir, hub, overrides, setting):
    request.getfixturevalue(hub)
    _train_refused(tmp_path, overrides, [setting, "local folder"])


def test_the_defaults_and_every_shipped_choice_pass(tmp_path, cache_dir):
    """The rules refuse mistakes, not the shipped configs."""
    from cmvl.config.paths import config_groups
    from cmvl.config.preflight import preflight

    for group in ("fusion", "task", "vision"):
        for choice in config_groups()[group]:
            if (group, choice) == ("vision", "hf"):
                continue  # needs a model folder (its own test above)
            extra = ["vision.encoder.name=resnet18"] if (group, choice) == ("vision", "torchvision") else []
            preflight([f"{group}={choice}", *extra, f"hydra.run.dir={tmp_path / 'run'}"])
    for trainer in ("default", "cpu", "debug", "ddp"):
        preflight([f"trainer={trainer}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_devices_are_checked_against_the_gpus_a_machine_has():
    """The GPU side of the devices check, on any machine: the count of GPUs is given."""
    from cmvl.config.hardware import _check_devices
    from cmvl.errors import ConfigError

    for fitting in ("auto", 2, -1, [0, 1], "0,1", "[1]", "2"):
        _check_devices(fitting, gpus=2, cores=2)
    for absent, needle in [([0, 3], "ids 3 do not exist"), ("0,2", "ids 2 do not exist"), (4, "has 2 GPUs"), ("x", "")]:
        with pytest.raises(ConfigError, match=needle):
            _check_devices(absent, gpus=2, cores=2)


def test_fp16_and_the_gpu_accelerator_pass_where_there_is_a_gpu(monkeypatch):
    from omegaconf import OmegaConf

    from cmvl.config import hardware

    monkeypatch.setattr(hardware, "_gpu_count", lambda: 1)
    for accelerator in ("gpu", "cuda", "auto"):
        trainer = {"accelerator": accelerator, "precision": "16-mixed", "devices": 1}
        hardware.check_hardware(OmegaConf.create({"trainer": trainer}))


def test_a_key_given_twice_is_named_and_the_last_value_is_used(tmp_path, cache_dir):
    """Scripts rely on Hydra's last-wins order; a repeated key still gets one warning line naming both values."""
    result = cli_in_process(
        "train", "model.dim=32", "model.dim=48", "fusion=concat", "fusion=concat", "--cfg", "job", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "model.dim is given twice (model.dim=32, then model.dim=48): the last one is used" in result.stderr
    assert "fusion is given twice" not in result.stderr  # the same value twice changes nothing
    assert "dim: 48" in result.stdout
