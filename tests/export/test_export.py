"""`cmvl export`: ONNX, torch.export and safetensors models that compute what PyTorch computes (checked by the
command and here), a client with only onnxruntime/tokenizers/Pillow/NumPy that gets PyTorch's answers, and bad
input refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cmvl
from cmvl.export.graph import ExportableModel
from cmvl.inference.inputs import run_images, run_texts
from tests.conftest import assert_one_line_error, cli_in_process, exported

CLIENT = Path(__file__).with_name("onnx_client.py")


@pytest.fixture(scope="module")
def checkpoint(finished_tiny_run) -> Path:
    return finished_tiny_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def run(checkpoint):
    return cmvl.load_run(checkpoint)


@pytest.fixture(scope="module")
def onnx_dir(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "onnx"
    exported(checkpoint, out, "format=onnx", "exporter=torchscript")
    return out


def _requests(tiny_world: Path, count: int) -> list[dict]:
    questions = json.loads(next(tiny_world.glob("*_val_questions.json")).read_text())["questions"][:count]
    folder = next(p for p in tiny_world.iterdir() if p.is_dir() and "val" in p.name)
    return [{"image": str(next(folder.glob(f"*{q['image_id']:012d}*"))), "question": q["question"]} for q in questions]


def test_onnx_manifest_and_parity(onnx_dir, run):
    manifest = json.loads((onnx_dir / "cmvl_export.json").read_text())
    assert manifest["task"] == "vqa" and manifest["labels"] == run.task.answers
    assert [i["name"] for i in manifest["inputs"]] == ["images", "input_ids", "attention_mask"]
    assert manifest["inputs"][0]["dtype"] == "uint8" and manifest["image"]["normalise_inside_graph"]
    assert manifest["image"]["mean"] == list(run.config.data.image.mean)
    assert manifest["parity"]["max_abs_diff"]["logits"] <= 1e-4 and manifest["parity"]["rows"] > 1
    assert (onnx_dir / "tokenizer.json").is_file() and (onnx_dir / "model.onnx").is_file()


def test_a_client_without_torch_or_cmvl_gets_pytorchs_answers(onnx_dir, run, tiny_world, tmp_path):
    requests = _requests(tiny_world, 6)
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    result = subprocess.run(
        [sys.executable, str(CLIENT), str(onnx_dir), str(tmp_path / "requests.json")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    answered = json.loads(result.stdout)
    assert answered["imported"] == []  # neither torch nor cmvl was imported
    images = run_images(run, [r["image"] for r in requests])
    ids, mask = run_texts(run, [r["question"] for r in requests])
    with torch.no_grad():
        logits = ExportableModel(run.model, run.task)(images, ids, mask)[0]
    assert answered["answers"] == [run.task.answers[j] for j in logits.argmax(1).tolist()]
    assert np.abs(np.asarray(answered["logits"]) - logits.numpy()).max() <= 1e-4


def test_torch_export_program_has_a_dynamic_batch_and_text_length(checkpoint, run, tmp_path):
    manifest = exported(checkpoint, tmp_path / "pt2", "format=torch_export")
    assert manifest["parity"]["max_abs_diff"]["logits"] <= 1e-4
    program = torch.export.load(tmp_path / "pt2" / "model.pt2").module()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    ids, mask = run_texts(run, ["what color is the circle?", "how many shapes?", "is there a red square?"])
    with torch.no_grad():
        expected = ExportableModel(run.model, run.task)(images, ids, mask)[0]
        got = program(images=images, input_ids=ids, attention_mask=mask)[0]
    assert (got - expected).abs().max() <= 1e-4


def test_safetensors_is_read_by_load_run(checkpoint, run, tmp_path):
    exported(checkpoint, tmp_path / "st", "format=safetensors")
    shared = tmp_path / "st" / "model.safetensors"
    assert not shared.read_bytes().startswith(b"PK")  # not a (pickle-bearing) torch zip file
    restored = cmvl.load_run(shared)
    assert restored.task.answers == run.task.answers and restored.config.model == run.config.model
    for key, value in run.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["format=tflite"], ["format=tflite", "choose one of onnx, torch_export, safetensors"]),
        (["format=onnx", "exporter=jit"], ["exporter=jit"]),
        (["format=onnx", "out=/proc/cmvl-export"], ["out=", "not writable"]),
    ],
)
def test_bad_arguments_are_one_line(checkpoint, tmp_path, args, needles):
    if not any(a.startswith("out=") for a in args):
        args = [*args, f"out={tmp_path / 'o'}"]
    assert_one_line_error(cli_in_process("export", f"ckpt={checkpoint}", *args, cwd=tmp_path), *needles)
    assert not (tmp_path / "o").exists()


def test_a_non_checkpoint_file_and_a_full_folder_are_refused(checkpoint, tmp_path):
    junk = tmp_path / "notes.ckpt"
    junk.write_text("not a checkpoint")
    result = cli_in_process("export", f"ckpt={junk}", "format=onnx", f"out={tmp_path / 'o'}", cwd=tmp_path)
    assert_one_line_error(result, "not a readable checkpoint")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = cli_in_process("export", f"ckpt={checkpoint}", "format=onnx", f"out={tmp_path / 'full'}", cwd=tmp_path)
    assert_one_line_error(result, "not an empty folder")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
