"""Checkpoint schema versions: a checkpoint records its layout; one written in the older layout (version 1: no
version, one model class, nn.MultiheadAttention / nn.TransformerDecoder weights, frozen parts of no use to the
task) is upgraded on load, evaluates to the same metrics and resumes; one from a newer cmvl is refused in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from cmvl.config.compose import compose_config
from cmvl.errors import CheckpointError
from cmvl.training.checkpoint_schema import MIGRATIONS, SCHEMA_VERSION, upgrade_checkpoint
from tests.conftest import (
    TINY_TRAINING,
    TINY_WORLD_ANY_TASK,
    assert_one_line_error,
    cli_in_process,
    load_checkpoint_file,
)

# A multitask holds every kind of converted weight: the fusion's attention and the caption decoder's layers.
MULTITASK = [
    *TINY_WORLD_ANY_TASK,
    *TINY_TRAINING,
    "task=multitask",
    "task.tasks.vqa.min_answer_count=1",
    "task.tasks.caption.beam_size=1",
    "task.tasks.caption.meteor=never",  # METEOR runs Java: slow, and not what is compared here
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "samples.count=0",
]
# cmvl's DecoderLayer names → nn.TransformerDecoderLayer's (the layout version 1 could hold).
TORCH_DECODER_NAMES = {
    "cross_attn": "multihead_attn",
    "norm_self": "norm1",
    "norm_cross": "norm2",
    "norm_ff": "norm3",
    "ff.0": "linear1",
    "ff.3": "linear2",
}


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("schema")
    result = cli_in_process("train", *MULTITASK, f"hydra.run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run" / "checkpoints" / "last.ckpt"


def _pack_attention(state: dict, prefix: str) -> None:
    """cmvl's q/k/v projections under `prefix` back into nn.MultiheadAttention's packed in-projection."""
    for key in [k for k in state if k.startswith(prefix) and ".q_proj." in k]:
        module, part = key.split(".q_proj.")
        packed = torch.cat([state.pop(f"{module}.{p}_proj.{part}") for p in "qkv"])
        state[f"{module}.in_proj_{part}"] = packed


def _as_torch_decoder(state: dict, prefix: str) -> None:
    """A CaptionDecoder's weights under `prefix` named as nn.TransformerDecoder named them."""
    for key in [k for k in state if k.startswith(prefix)]:
        name = key[len(prefix) :]
        match = re.fullmatch(r"layers\.(\d+)\.(cross_attn|self_attn|norm_\w+|ff\.[03])\.(.+)", name)
        if match:
            module = TORCH_DECODER_NAMES.get(match[2], match[2])
            state[f"{prefix}layers.layers.{match[1]}.{module}.{match[3]}"] = state.pop(key)
        elif name.startswith("norm."):
            state[f"{prefix}layers.{name}"] = state.pop(key)


def _version_1(checkpoint: dict, *, torch_modules: bool) -> dict:
    """`checkpoint` as cmvl wrote it before schema versions: no version, no model family in the config, and with
    `torch_modules` the attention and caption decoder weights of nn.MultiheadAttention / nn.TransformerDecoder."""
    del checkpoint["cmvl"]["schema_version"]
    del checkpoint["cmvl"]["config"]["model"]["_target_"]
    if torch_modules:
        state = checkpoint["state_dict"]
        _as_torch_decoder(state, "model.heads.caption.")
        _pack_attention(state, "model.fusion.")
        _pack_attention(state, "model.heads.caption.")
        assert any(k.endswith("layers.layers.0.multihead_attn.in_proj_weight") for k in state)
    return checkpoint


def test_a_checkpoint_records_its_schema_version(trained):
    checkpoint = load_checkpoint_file(trained)
    assert checkpoint["cmvl"]["schema_version"] == SCHEMA_VERSION == len(MIGRATIONS) + 1
    assert checkpoint["cmvl"]["config"]["model"]["_target_"] == "cmvl.models.families.vl_fusion.VisionLanguageModel"


def test_a_version_1_checkpoint_upgrades_to_the_same_weights(trained):
    current = load_checkpoint_file(trained)
    older = _version_1(load_checkpoint_file(trained), torch_modules=True)
    upgraded = upgrade_checkpoint(older)
    assert upgraded["cmvl"]["schema_version"] == SCHEMA_VERSION
    assert upgraded["cmvl"]["config"] == current["cmvl"]["config"]
    assert set(upgraded["state_dict"]) == set(current["state_dict"])
    for key, value in current["state_dict"].items():
        assert torch.equal(upgraded["state_dict"][key], value), key
    assert upgrade_checkpoint(upgraded) is upgraded  # an up-to-date checkpoint is left as it is


def _metrics(result, out: Path) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())["metrics"]


def test_a_version_1_checkpoint_evaluates_to_the_same_metrics(trained, tmp_path):
    older = tmp_path / "older" / "last.ckpt"
    older.parent.mkdir()
    torch.save(_version_1(load_checkpoint_file(trained), torch_modules=True), older)
    runs = {}
    for name, path in (("current", trained), ("older", older)):
        out = tmp_path / f"out_{name}"
        result = cli_in_process("eval", f"ckpt={path}", f"out={out}", "trainer.enable_progress_bar=false", cwd=tmp_path)
        runs[name] = _metrics(result, out), sorted(p.read_text() for p in out.glob("predictions_*.json"))
    assert runs["older"][0] and runs["older"] == runs["current"]


def test_a_version_1_checkpoint_resumes(trained, tmp_path):
    """Lightning reads the file itself to resume: the module upgrades it before the weights are loaded."""
    older = tmp_path / "older.ckpt"
    torch.save(_version_1(load_checkpoint_file(trained), torch_modules=False), older)
    run_dir = tmp_path / "run"
    result = cli_in_process(
        "train", *MULTITASK, "trainer.max_epochs=2", f"resume={older}", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    assert resumed["cmvl"]["schema_version"] == SCHEMA_VERSION and resumed["epoch"] == 1


@pytest.mark.parametrize(
    ("version", "needle"),
    [
        (SCHEMA_VERSION + 1, f"written by a newer cmvl (checkpoint schema {SCHEMA_VERSION + 1}"),
        ("2", "'cmvl.schema_version' is '2', not a schema version"),
        (0, "'cmvl.schema_version' is 0, not a schema version"),
    ],
)
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_an_unknown_schema_version_is_one_line(trained, tmp_path, version, needle, command):
    checkpoint = load_checkpoint_file(trained)
    checkpoint["cmvl"]["schema_version"] = version
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    if command == "eval":
        result = cli_in_process("eval", f"ckpt={path}", cwd=tmp_path)
    else:
        result = cli_in_process(
            "train", *MULTITASK, f"resume={path}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
        )
    line = assert_one_line_error(result, needle)
    assert "crafted.ckpt" in line


# -- the migration of version 1, unit by unit ----------------------------------------------------------------
def _checkpoint(overrides: list[str], state: dict) -> dict:
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(compose_config(overrides), resolve=False)
    return {"cmvl": {"config": config, "data_state": {}}, "state_dict": dict(state)}


def test_version_1_weights_of_parts_the_task_does_not_need_go():
    """Version 1 built every part and froze the ones its task did not use; they are no longer built."""
    weights = {
        "model.vision.body.0.weight": torch.ones(1),
        "model.vision_proj.0.weight": torch.ones(1),
        "model.text.bert.embeddings.word_embeddings.weight": torch.ones(1),
        "model.text_proj.0.weight": torch.ones(1),
        "model.fusion.norm.weight": torch.ones(1),
        "model.heads.tagging.0.weight": torch.ones(1),
    }
    upgraded = upgrade_checkpoint(_checkpoint(["task=tagging"], weights))
    assert set(upgraded["state_dict"]) == {
        "model.vision.body.0.weight",
        "model.vision_proj.0.weight",
        "model.heads.tagging.0.weight",
    }
    kept = upgrade_checkpoint(_checkpoint(["task=retrieval", "task.itm=true"], weights))["state_dict"]
    assert set(kept) == set(weights)  # retrieval with image-text matching runs every part
    no_fusion = upgrade_checkpoint(_checkpoint(["task=retrieval"], weights))["state_dict"]
    assert "model.fusion.norm.weight" not in no_fusion and "model.text_proj.0.weight" in no_fusion


def test_version_1_conversion_leaves_a_users_own_modules_alone():
    """Only cmvl's own fusion and heads held nn.MultiheadAttention: a user's fusion class keeps its weights (and a
    task that is not cmvl's, built under trust the checkpoint cannot give, keeps every part)."""
    packed = {"model.fusion.attn.in_proj_weight": torch.randn(6, 2), "model.text.x": torch.ones(1)}
    checkpoint = _checkpoint(["task=tagging"], packed)
    checkpoint["cmvl"]["config"]["fusion"] = {"_target_": "mylab.MyFusion"}
    checkpoint["cmvl"]["config"]["task"]["_target_"] = "mylab.MyTask"
    assert set(upgrade_checkpoint(checkpoint)["state_dict"]) == set(packed)
    converted = upgrade_checkpoint(_checkpoint(["task=vqa"], packed))["state_dict"]
    assert set(converted) == {f"model.fusion.attn.{p}_proj.weight" for p in "qkv"} | {"model.text.x"}
    torch.testing.assert_close(
        torch.cat([converted[f"model.fusion.attn.{p}_proj.weight"] for p in "qkv"]),
        packed["model.fusion.attn.in_proj_weight"],
    )


def test_a_malformed_version_1_checkpoint_is_one_error():
    checkpoint = _checkpoint(["task=vqa"], {"model.fusion.attn.in_proj_weight": "not a tensor"})
    with pytest.raises(CheckpointError, match="does not upgrade from schema 1"):
        upgrade_checkpoint(checkpoint, path="x.ckpt")
