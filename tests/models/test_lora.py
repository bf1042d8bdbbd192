"""LoRA through peft (`text.lora.*`): on the real pretrained all-MiniLM-L6-v2 (`text=minilm`), only the adapters of
the encoder learn, the checkpoint alone rebuilds the run (frozen base weights and adapters), `cmvl export` merges
the adapters into plain layers with the same outputs, and bad settings are one line (exit 2)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from cmvl.config.compose import compose_config
from cmvl.errors import ConfigError
from cmvl.models.lora import apply_lora, has_lora, lora_summary, merge_lora
from cmvl.models.remote_code import load_auto_model
from cmvl.run import load_run
from cmvl.training.train import run_training
from tests.choice_helpers import MINILM
from tests.conftest import TINY_WORLD, assert_one_line_error, cli_in_process, load_checkpoint_file

SMALL = [
    "text=minilm",
    "trainer=debug",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "model.dim=32",
    "vision.encoder.channels=32",
    "samples.count=0",
]
ENCODER = "model.text.model."  # the minilm BertModel's weights in the checkpoint


@pytest.fixture(scope="module")
def lora_run(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    run_training(
        compose_config([*TINY_WORLD, *SMALL, "text.lora.r=4", "checkpoint.save_last=false", f"paths.output_dir={out}"])
    )
    return out / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def restored(lora_run):
    """The run as load_run restores it, and one validation batch (tests copy the model before changing it)."""
    from cmvl.export import validation_batches

    run = load_run(lora_run)
    return run, validation_batches(run, 1)[0]


def _copy(run):
    return dataclasses.replace(run, model=copy.deepcopy(run.model))


def _pretrained_weights() -> dict[str, torch.Tensor]:
    return load_auto_model(MINILM, pretrained=True, key="test").state_dict()


def _outputs(run, batch) -> torch.Tensor:
    with torch.no_grad():
        return run.task.eval_forward(run.model, batch).logits


def test_only_the_adapters_of_the_encoder_learn(lora_run, restored):
    state = load_checkpoint_file(lora_run)["state_dict"]
    pristine = _pretrained_weights()
    base = {k: v for k, v in state.items() if k.startswith(ENCODER) and "lora_" not in k}
    adapters = {k: v for k, v in state.items() if k.startswith(ENCODER) and "lora_" in k}
    assert len(adapters) == 6 * 2 * 2  # 6 layers × (query, value) × (A, B)
    for key, value in base.items():  # peft's wrapped layers keep their weights under `base_layer`
        assert torch.equal(value, pristine[key.removeprefix(ENCODER).replace(".base_layer", "")]), key
    assert all(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)  # B starts at zero: it trained
    run, _ = restored
    trainable = [n for n, p in run.model.text.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    lines = lora_summary(run.model)
    assert lines[0] == "LoRA on text: 36,864 trainable of 22,750,080 parameters"


def test_the_checkpoint_alone_rebuilds_the_adapted_model(restored):
    """load_run builds the encoder randomly initialised and loads every weight from the checkpoint: the same outputs
    as the pretrained encoder with the checkpoint's adapters, projections and heads."""
    run, batch = restored
    reference = _copy(run)
    pretrained = _pretrained_weights()
    weights = reference.model.state_dict()
    for key in weights:  # the encoder's base weights replaced by the pretrained ones, read from the package
        if key.startswith("text.model.") and "lora_" not in key:
            weights[key] = pretrained[key.removeprefix("text.model.").replace(".base_layer", "")]
    reference.model.load_state_dict(weights)
    torch.testing.assert_close(_outputs(run, batch), _outputs(reference, batch), rtol=0, atol=0)


def test_export_merges_the_adapters_into_plain_layers(lora_run, restored, tmp_path):
    from cmvl.export import export_run
    from cmvl.training.checkpoints import load_checkpoint

    adapted, batch = restored
    before = _outputs(adapted, batch)
    manifest = export_run(_copy(adapted), load_checkpoint(lora_run), "safetensors", tmp_path / "out")
    assert manifest["parity"]["max_abs_diff"]
    merged = load_run(tmp_path / "out" / "model.safetensors")
    assert not has_lora(merged.model) and merged.config.text.lora.r is None
    torch.testing.assert_close(_outputs(merged, batch), before, rtol=0, atol=1e-5)


def test_merge_gives_the_same_function_on_a_trained_adapter():
    model = load_auto_model(MINILM, pretrained=True, key="test").eval()
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        pretrained = model(input_ids=ids, attention_mask=mask).last_hidden_state
    apply_lora(model, {"r": 2, "alpha": 8, "target_modules": ["query", "value", "dense"]}, "text.lora")
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert merge_lora(model) and not has_lora(model)
        after = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(before, pretrained)  # the adapters changed the function
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("text.lora.r=0", "text.lora.r=0: must be a positive integer"),
        ("text.lora.r=-3", "text.lora.r=-3: must be a positive integer"),
    ],
)
def test_bad_lora_settings_are_one_line(tmp_path, override, needle):
    result = cli_in_process("train", *TINY_WORLD, *SMALL, override, cwd=tmp_path)
    assert_one_line_error(result, needle)


def test_an_unknown_target_module_is_one_line(tmp_path):
    """What `cmvl train` prints (a ConfigError: one line, exit 2): the key, peft's reason, the layers there are."""
    from transformers import BertConfig, BertModel

    tiny = BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    with pytest.raises(ConfigError) as err:
        apply_lora(tiny, {"r": 4, "target_modules": ["qkv"]}, "text.lora")
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        "text.lora.target_modules=['qkv']: Target modules {'qkv'} not found"
    )
    assert "query" in message and "value" in message


def test_apply_lora_refuses_a_bad_rank_given_directly():
    with pytest.raises(ConfigError, match="text.lora.r=0"):
        apply_lora(torch.nn.Linear(2, 2), {"r": 0}, "text.lora")
