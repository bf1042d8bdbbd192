"""`cmvl export` of a captioning run: the encoder and one decoding step with its key/value cache, checked by the
command (max |Δ| <= 1e-4, the same greedy captions), and a client with only onnxruntime, tokenizers, Pillow and
NumPy that writes `cmvl predict`'s captions (beam_size=1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cmvl
from cmvl.export.caption_graph import CaptionEncoder, CaptionStep, caption_decoder
from tests.conftest import TINY_TRAINING, TINY_WORLD_ANY_TASK, cli_in_process, exported

CLIENT = Path(__file__).with_name("caption_client.py")


@pytest.fixture(scope="module")
def checkpoint(tiny_world, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("caption") / "run"
    result = cli_in_process(
        "train", "task=caption", *TINY_WORLD_ANY_TASK, *TINY_TRAINING, "trainer.max_epochs=1", "task.beam_size=1",
        "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", cwd=run_dir.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def onnx_dir(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "onnx"
    exported(checkpoint, out, "format=onnx", "exporter=torchscript")
    return out


def test_the_onnx_graphs_match_pytorch(onnx_dir):
    manifest = json.loads((onnx_dir / "cmvl_export.json").read_text())
    assert manifest["task"] == "caption" and manifest["files"]["decoder_step"] == "decoder_step.onnx"
    assert manifest["graphs"]["decoder_step"]["inputs"][-2:] == ["cache_keys", "cache_values"]
    parity = manifest["parity"]
    assert parity["rows"] > 1 and set(parity["max_abs_diff"]) == {"memory", "logits", "cache", "step_vs_decoder"}
    assert all(value <= 1e-4 for value in parity["max_abs_diff"].values())
    assert (onnx_dir / "encoder.onnx").is_file() and (onnx_dir / "tokenizer.json").is_file()


def test_a_client_without_torch_or_cmvl_writes_predicts_captions(onnx_dir, checkpoint, tiny_world, tmp_path):
    folder = next(p for p in tiny_world.iterdir() if p.is_dir() and "val" in p.name)
    images = sorted(str(p) for p in folder.iterdir())[:5]
    result = subprocess.run(
        [sys.executable, str(CLIENT), str(onnx_dir), *images], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answered = json.loads(result.stdout)
    assert answered["imported"] == []  # neither torch nor cmvl was imported
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps({"image": image}) + "\n" for image in images))
    out = cli_in_process(
        "predict", f"ckpt={checkpoint}", "input=requests.jsonl", "beam_size=1", "out=predicted.jsonl", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    predicted = [json.loads(line)["caption"] for line in (tmp_path / "predicted.jsonl").read_text().splitlines()]
    assert answered["captions"] == predicted
    assert any(predicted)  # a trained decoder writes words, not only EOS


def test_the_cached_step_is_the_decoders_forward(checkpoint):
    """The step (fixed-size cache, this position's keys written in place) computes the decoder's logits at every
    position of a prefix, for a batch of 3 (another size than the traced one)."""
    run = cmvl.load_run(checkpoint)
    model = run.model.eval()
    step = CaptionStep(caption_decoder(model, run.task)).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        memory, mask = CaptionEncoder(model)(images)
        prefix = torch.randint(0, step.decoder.embed.num_embeddings, (3, 6))
        full = step.decoder(prefix, cmvl.models.tokens.Tokens(memory, mask))
        keys, values = step.empty_cache(3)
        for position in range(6):
            logits, keys, values = step(prefix[:, position], torch.tensor([position]), memory, mask, keys, values)
            assert (logits - full[:, position]).abs().max() <= 1e-5, position
        assert keys[:, :, :, 6:].abs().max() == 0  # nothing written past the last position


@pytest.mark.parametrize("fmt", ["torch_export", "safetensors"])
def test_torch_export_and_safetensors_of_a_captioning_run(checkpoint, tmp_path, fmt):
    manifest = exported(checkpoint, tmp_path / fmt, f"format={fmt}", "parity_batches=1")
    assert all(value <= 1e-4 for value in manifest["parity"]["max_abs_diff"].values())
    if fmt == "safetensors":
        restored = cmvl.load_run(tmp_path / fmt / "model.safetensors")
        assert restored.task.name == "caption"
    else:
        assert (tmp_path / fmt / "decoder_step.pt2").is_file()


def test_a_decoder_that_is_not_the_transformer_is_refused(checkpoint):
    from cmvl.errors import UserError
    from cmvl.models.lstm_decoder import LSTMCaptionDecoder

    run = cmvl.load_run(checkpoint)
    run.task.decoder = "lstm"
    run.model.heads["caption"] = LSTMCaptionDecoder(
        vocab_size=10, dim=32, hidden=32, max_positions=8, dropout=0.0, attention="none"
    )
    with pytest.raises(UserError, match="task.decoder=lstm is not exportable yet"):
        caption_decoder(run.model, run.task)


def test_the_dynamo_exporter_names_the_dimensions_as_the_manifest_does(tmp_path):
    """The default exporter (torch.onnx.export(dynamo=True), which the captioning test above does not run: about 16 s
    of CPU for the two real graphs) on a stand-in step with a cache whose batch is its second axis: the ONNX graph's
    symbolic dimension is `batch` as in cmvl_export.json, not the tracer's symbol, and another batch size runs."""
    import onnxruntime

    from cmvl.export.formats import save_dynamo_onnx

    class Step(torch.nn.Module):
        def forward(self, token, cache):
            return token * 2, cache + token[None, :, None].float()

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    shapes = {"token": {0: batch}, "cache": {1: batch}}
    example = {"token": torch.ones(3, dtype=torch.long), "cache": torch.zeros(2, 3, 4)}
    program = torch.export.export(Step(), (), kwargs=example, dynamic_shapes=shapes, strict=False)
    names = {"input_names": ["token", "cache"], "output_names": ["doubled", "cache_out"]}
    save_dynamo_onnx(program, tmp_path / "step.onnx", names, dynamic_shapes=shapes, opset=18)
    session = onnxruntime.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch"], [2, "batch", 4]]
    assert [o.shape for o in session.get_outputs()] == [["batch"], [2, "batch", 4]]
    doubled, cache = session.run(None, {"token": np.array([1, 2, 3, 4, 5]), "cache": np.zeros((2, 5, 4), np.float32)})
    assert doubled.tolist() == [2, 4, 6, 8, 10] and cache[1, 4].tolist() == [5.0] * 4
