"""`cmvl compress`: torchao int8 and pruned checkpoints that `cmvl.load_run` / `cmvl eval` read (weights_only), the
side-by-side report, structured pruning that really removes heads and channels, and bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import cmvl
from cmvl.compress.prune import make_permanent, prune_structured, prune_unstructured
from cmvl.errors import CheckpointError
from cmvl.evaluation import evaluate_checkpoint
from cmvl.models.attention import MultiHeadAttention
from cmvl.training.checkpoints import load_checkpoint
from tests.conftest import assert_one_line_error, cli_in_process

FAST = ["repeats=1", "batch_sizes=[1,4]"]


@pytest.fixture(scope="module")
def checkpoint(finished_tiny_run) -> Path:
    return finished_tiny_run / "checkpoints" / "best.ckpt"


def _compress(checkpoint: Path, out: Path, *args: str) -> dict:
    result = cli_in_process("compress", f"ckpt={checkpoint}", f"out={out}", *args, *FAST, cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "absolute drop" in result.stdout
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def int8_dir(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compress") / "int8"
    _compress(checkpoint, out, "method=int8_dynamic")
    return out


def test_int8_report_measures_both_models_side_by_side(int8_dir):
    report = json.loads((int8_dir / "report.json").read_text())
    assert report["schema_version"] == 1 and report["method"] == "int8_dynamic" and "torchao" in report["library"]
    assert report["metric"] == "acc" and report["environment"]["torch"] == torch.__version__
    for side in ("original", "compressed"):
        assert set(report[side]["latency"]) == {"1", "4"} and report[side]["size_mb"] > 0
    original, compressed = report["original"]["metrics"]["acc"], report["compressed"]["metrics"]["acc"]
    assert report["change"]["absolute_drop"] == pytest.approx(original - compressed)
    assert report["compressed"]["size_mb"] < report["original"]["size_mb"]  # int8 weights: 4x smaller linears
    assert "| val acc |" in (int8_dir / "report.md").read_text()


def test_int8_checkpoint_loads_safely_and_cmvl_eval_scores_it(int8_dir, tmp_path):
    saved = load_checkpoint(int8_dir / "model.ckpt")  # torch.load(weights_only=True)
    assert saved["cmvl"]["compression"]["method"] == "int8_dynamic" and "optimizer_states" not in saved
    run = cmvl.load_run(int8_dir / "model.ckpt")
    linear = next(m for m in run.model.modules() if isinstance(m, nn.Linear))
    assert type(linear.weight).__name__ == "Int8Tensor"
    scores = evaluate_checkpoint(int8_dir / "model.ckpt", overrides=["dataset.split=val"], out_dir=tmp_path)
    report = json.loads((int8_dir / "report.json").read_text())
    assert scores["metrics"]["val/vqa/acc"] == pytest.approx(report["compressed"]["metrics"]["acc"], abs=1e-6)


def test_int8_static_writes_a_quantised_onnx_model_beside_its_float_one(checkpoint, tmp_path):
    """ONNX Runtime's static quantiser: the float ONNX model scores as PyTorch does, the int8 one is smaller and
    carries QDQ nodes, and the report records the calibration."""
    import onnx

    out = tmp_path / "static"
    report = _compress(checkpoint, out, "method=int8_static", "calibration_batches=2")
    assert "onnxruntime" in report["library"] and report["settings"] == {
        "method": "int8_static", "calibration_batches": 2
    }  # fmt: skip
    assert report["original"]["metrics"] == pytest.approx(report["original"]["pytorch_metrics"], abs=1e-6)
    assert report["compressed"]["size_mb"] < report["original"]["size_mb"]
    assert {"model.onnx", "model.float.onnx", "cmvl_export.json"} <= {p.name for p in out.iterdir()}
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_an_int8_checkpoint_is_not_exported_to_onnx(int8_dir, tmp_path):
    result = cli_in_process(
        "export", f"ckpt={int8_dir / 'model.ckpt'}", "format=onnx", f"out={tmp_path / 'o'}", cwd=tmp_path
    )
    assert_one_line_error(result, "int8_dynamic (torchao int8) checkpoint is not supported", "method=int8_static")
    assert not (tmp_path / "o").exists()


def test_structured_pruning_removes_heads_and_channels_and_reloads(checkpoint, tmp_path):
    report = _compress(checkpoint, tmp_path / "pruned", "method=prune", "prune.amount=0.5", "prune.finetune_epochs=1")
    assert report["compressed"]["parameters"] < report["original"]["parameters"]
    original, pruned = cmvl.load_run(checkpoint), cmvl.load_run(tmp_path / "pruned" / "model.ckpt")
    optim = original.config.optim  # the fine-tune runs at the rate the run's schedule ended at
    last_lr = float(optim.optimizer.lr) * float(optim.scheduler.min_lr_ratio)
    assert report["settings"] == {
        "method": "prune", "kind": "structured", "amount": 0.5, "finetune_epochs": 1, "finetune_lr": last_lr
    }  # fmt: skip
    heads = [(a.heads, b.heads) for a, b in zip(*(
        [m for m in r.model.modules() if isinstance(m, MultiHeadAttention)] for r in (original, pruned)))]  # fmt: skip
    assert heads and all(after == before // 2 for before, after in heads)
    ff = pruned.model.fusion.text_blocks[0].ff
    assert ff[0].out_features == ff[3].in_features == original.model.fusion.text_blocks[0].ff[0].out_features // 2
    bert = pruned.model.text.bert.encoder.layer[0]
    assert (
        bert.intermediate.dense.out_features
        == original.model.text.bert.encoder.layer[0].intermediate.dense.out_features // 2
    )
    scores = evaluate_checkpoint(tmp_path / "pruned" / "model.ckpt", overrides=["dataset.split=val"], out_dir=tmp_path)
    assert scores["metrics"]["val/vqa/acc"] == pytest.approx(report["compressed"]["metrics"]["acc"], abs=1e-6)


def test_structured_pruning_keeps_the_function_of_the_kept_units():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.0), nn.Linear(16, 8)).eval()
    with torch.no_grad():
        model[0].weight[:4] = 0  # four dead channels: pruning 25% removes exactly them
        model[0].bias[:4] = 0
    x = torch.randn(5, 8)
    expected = model(x)
    assert prune_structured(model, 0.25) == {"attention_modules": 0, "feed_forward_blocks": 1}
    assert model[0].out_features == 12 and torch.allclose(model(x), expected, atol=1e-6)


def test_unstructured_pruning_zeroes_the_smallest_weights_globally():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 20), nn.Linear(20, 10))
    smallest = torch.cat([m.weight.detach().abs().flatten() for m in model]).sort().values[:180]
    prune_unstructured(model, 0.3)
    make_permanent(model)
    weights = torch.cat([m.weight.detach().flatten() for m in model])
    assert int((weights == 0).sum()) == 180 and smallest.max() <= weights.abs()[weights != 0].min()
    assert not any(hasattr(m, "weight_orig") for m in model)


def test_an_unknown_compression_record_is_refused(checkpoint, tmp_path):
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved["cmvl"]["compression"] = {"method": "os.system"}
    torch.save(saved, tmp_path / "crafted.ckpt")
    with pytest.raises(CheckpointError, match="unknown compression"):
        cmvl.load_run(tmp_path / "crafted.ckpt")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["method=int4"], ["method=int4", "choose one of int8_dynamic"]),
        (["method=prune", "prune.amount=1.5"], ["prune.amount=1.5", "between 0 and 1"]),
        (["method=prune", "prune.kind=random"], ["prune.kind=random"]),
        (["method=int8_dynamic", "batch_sizes=[0]"], ["batch_sizes"]),
    ],
)
def test_bad_arguments_are_one_line(checkpoint, tmp_path, args, needles):
    result = cli_in_process("compress", f"ckpt={checkpoint}", f"out={tmp_path / 'o'}", *args, cwd=tmp_path)
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "o").exists()
