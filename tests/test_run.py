"""`cmvl.load_run`: a run restored from its checkpoint alone (config, tokenizer, task state, model in eval mode on
a device), without opening, reading or generating any dataset; bad files, overrides and devices are one line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cmvl
from cmvl.errors import CheckpointError, ConfigError
from tests.conftest import REPO, dataset_untouched, load_checkpoint_file


@pytest.fixture(scope="module")
def best(finished_tiny_run) -> Path:
    return finished_tiny_run / "checkpoints" / "best.ckpt"


def _saved_copy(checkpoint: dict, path: Path) -> Path:
    torch.save(checkpoint, path)
    return path


def test_load_run_restores_config_tokenizer_task_and_model(best):
    saved = load_checkpoint_file(best)
    run = cmvl.load_run(best)
    assert isinstance(run, cmvl.Run)
    assert run.task.answers == saved["cmvl"]["data_state"]["task"]["answers"]
    assert run.tokenizer.backend_tokenizer.to_str() == saved["cmvl"]["data_state"]["tokenizer"]["tokenizer_json"]
    assert run.config.model.dim == saved["cmvl"]["config"]["model"]["dim"]
    assert not run.model.training and all(not m.training for m in run.model.modules())
    assert run.device == torch.device("cpu") and all(p.device.type == "cpu" for p in run.model.parameters())
    weights = run.model.state_dict()
    assert all(torch.equal(weights[k.removeprefix("model.")], v) for k, v in saved["state_dict"].items())
    info = run.checkpoint
    assert info.path == best and info.sha256 == hashlib.sha256(best.read_bytes()).hexdigest()
    assert (info.epoch, info.global_step) == (saved["epoch"], saved["global_step"])
    assert info.val_history == saved["cmvl"]["val_history"] and isinstance(info.schema_version, int)


def test_load_run_reads_no_dataset(best, tmp_path, monkeypatch, tiny_world):
    """Nothing under the world the run was trained on is opened, no source is built and no world is generated,
    even with the dataset's root pointing at a folder that does not exist."""
    with dataset_untouched(monkeypatch, tiny_world, tmp_path / "gone") as opened:
        run = cmvl.load_run(best, overrides=[f"dataset.root={tmp_path / 'gone'}"])
    assert opened == [] and run.task.answers
    assert not (tmp_path / "gone").exists()


def test_a_model_restored_by_load_run_answers_as_evaluation_did(best, tmp_path):
    """The restored model and task, run by hand on the validation batches, give the predictions `cmvl eval`
    wrote: load_run is what evaluation restores with."""
    from cmvl.evaluation import evaluate_checkpoint
    from cmvl.training.build import build_datamodule

    result = evaluate_checkpoint(best, out_dir=tmp_path)
    run = cmvl.load_run(best)
    loader = build_datamodule(run.config, task=run.task, tokenizer=run.tokenizer).eval_dataloaders("val")["vqa"]
    mine = []
    with torch.no_grad():
        for batch in loader:
            mine += run.task.predictions(run.task.eval_forward(run.model, batch), batch)
    written = json.loads(Path(result["predictions_file"]).read_text())
    assert sorted(mine, key=lambda p: p["question_id"]) == written and len(written) == result["num_predictions"]


def test_load_run_takes_evaluation_overrides_and_refuses_the_others(best):
    run = cmvl.load_run(best, overrides=["task.vqa_eval=2017"])
    assert str(run.config.task.vqa_eval) == "2017" and run.task.rules.version == "2017"
    with pytest.raises(ConfigError, match="model.dim"):
        cmvl.load_run(best, overrides=["model.dim=64"])
    with pytest.raises(ConfigError, match="no such config key"):
        cmvl.load_run(best, overrides=["task.no_such_key=1"])


def test_a_gpu_run_restores_on_the_cpu(best, tmp_path):
    """A run trained on a GPU in fp16: its trainer settings follow `device`, so it restores on a CPU machine."""
    checkpoint = load_checkpoint_file(best)
    checkpoint["cmvl"]["config"]["trainer"].update(accelerator="gpu", devices=4, precision="16-mixed")
    run = cmvl.load_run(_saved_copy(checkpoint, tmp_path / "gpu.ckpt"), device="cpu")
    assert (run.config.trainer.accelerator, run.config.trainer.precision) == ("cpu", "32-true")


@pytest.mark.parametrize(
    ("device", "needle"),
    [
        ("nonsense", "not a device"),
        ("meta", "cpu, cuda or mps"),
        ("cuda:99", "cuda"),
        ("mps", "MPS"),
        ("cpu:3", "cpu has no device 3"),
    ],
)
def test_an_unavailable_device_is_one_line(best, device, needle):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ConfigError, match=needle) as err:
        cmvl.load_run(best, device=device)
    assert "\n" not in str(err.value)


def test_bad_files_are_one_line(best, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        cmvl.load_run(tmp_path / "nope.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        cmvl.load_run(tmp_path / "garbage.ckpt")
    checkpoint = load_checkpoint_file(best)
    checkpoint["state_dict"]["model.extra.weight"] = torch.zeros(2)  # a weight the model does not have
    with pytest.raises(CheckpointError, match="does not fit the model"):
        cmvl.load_run(_saved_copy(checkpoint, tmp_path / "extra.ckpt"))
    checkpoint = load_checkpoint_file(best)
    del checkpoint["state_dict"][next(iter(checkpoint["state_dict"]))]
    with pytest.raises(CheckpointError, match="does not fit the model"):
        cmvl.load_run(_saved_copy(checkpoint, tmp_path / "missing.ckpt"))


def test_the_checkpoint_cannot_trust_packages(best, tmp_path):
    """A checkpoint whose config trusts `os` and names os.system as its fusion is refused; nothing runs."""
    marker = tmp_path / "pwned"
    checkpoint = load_checkpoint_file(best)
    config = checkpoint["cmvl"]["config"]
    config["extra_target_prefixes"] = ["os"]
    config["fusion"] = {"_target_": "os.system", "command": f"touch {marker}"}
    with pytest.raises(ConfigError, match="fusion._target_=os.system"):
        cmvl.load_run(_saved_copy(checkpoint, tmp_path / "evil.ckpt"))
    assert not marker.exists()


def test_import_cmvl_stays_cheap():
    code = "import sys, cmvl; assert 'torch' not in sys.modules, 'torch'; assert callable(cmvl.load_run)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_run_restores_without_its_initial_weights_file(tiny_world, tmp_path):
    """A run that started from a weights file (`vision.encoder.pretrained=FILE`) restores after the file is gone:
    the checkpoint's weights replace the initial ones, so restoring reads no initial-weights source at all."""
    import torchvision

    from tests.conftest import TINY_TRAINING, TINY_WORLD, cli_in_process

    weights = tmp_path / "resnet18-init.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    tiny = [o for o in TINY_TRAINING if not o.startswith(("vision.", "trainer.max_epochs", "trainer.limit_train"))]
    result = cli_in_process(
        "train",
        *TINY_WORLD,
        *tiny,
        "vision=resnet18",
        f"vision.encoder.pretrained={weights}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    weights.unlink()
    run = cmvl.load_run(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert run.config.vision.encoder.pretrained == str(weights)  # the run's record of how it started is kept
    saved = load_checkpoint_file(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    restored = run.model.state_dict()
    assert all(torch.equal(restored[k.removeprefix("model.")], v) for k, v in saved.items())
