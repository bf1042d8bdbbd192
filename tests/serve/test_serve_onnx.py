"""`cmvl serve backend=onnx`: a `cmvl export format=onnx` folder of the session's tiny VQA run served in an
interpreter that never imports torch, answering what `cmvl predict` answers, for images of the model's size and for
images it resizes (the same pixels as training's resize: cmvl/serve/resize.py), under predict's near-tie rule; no
explanation maps (404); a folder that is no ONNX export is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cmvl
from cmvl.data.images import build_transform
from cmvl.predict.pipeline import PredictSettings, predict_requests
from cmvl.predict.requests import Request
from cmvl.serve.onnx_model import OnnxExport
from tests.conftest import REPO, assert_one_line_error, cli_in_process
from tests.serve.serving import val_questions

SERVICE = Path(__file__).with_name("onnx_service.py")
NEAR_TIE = 1e-4  # top-two probability gap under which two batchings may rank the two answers either way (predict's)
SCORE_TOLERANCE = 1e-5  # ONNX Runtime against PyTorch: logits within 1e-6; a resize one grey level off moves more
# Sizes the service and predict resize from (32 px is the model's): enlarged and shrunk, square and not.
RESIZED = [(45, 57), (20, 20), (100, 33)]


@pytest.fixture(scope="module")
def best(finished_tiny_run) -> Path:
    return finished_tiny_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def onnx_dir(best, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve-onnx") / "onnx"
    result = cli_in_process("export", f"ckpt={best}", f"out={out}", "format=onnx", "exporter=torchscript",
                            cwd=out.parent)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_onnx_backend_answers_predicts_answers_without_torch(best, onnx_dir, tiny_world, tmp_path):
    asked = val_questions(tiny_world)[:12]
    for k, (width, height) in enumerate(RESIZED):  # lossless copies at other sizes: both sides resize the same pixels
        image, question = asked[k]
        resized = tmp_path / f"resized{k}.png"
        Image.open(image).convert("RGB").resize((width, height), Image.Resampling.LANCZOS).save(resized)
        asked.append((resized, question))
    (tmp_path / "requests.json").write_text(json.dumps([[str(i), q] for i, q in asked]))
    result = subprocess.run(
        [sys.executable, str(SERVICE), str(onnx_dir), str(tmp_path / "requests.json")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.splitlines()[-1])
    assert served["imported"] == []
    run = cmvl.load_run(best)
    expected = predict_requests(run, [Request(i, {"question": q}) for i, q in asked], PredictSettings(batch_size=1))
    for record, result_ in zip(served["records"], expected):
        want = result_.to_json()
        assert record["task"] == "vqa" and len(record["answers"]) == len(want["answers"]) == 5
        gap = want["answers"][0]["score"] - want["answers"][1]["score"]
        assert record["answer"] == want["answer"] or gap < NEAR_TIE, (record, want)
        assert abs(record["answers"][0]["score"] - want["answers"][0]["score"]) < SCORE_TOLERANCE, (record, want)
    assert "vocabulary" in served["unknown"]["error"] and served["phrase"] == 422
    assert served["explain"][0] == 404 and "backend=onnx" in served["explain"][1]["error"]
    info = served["info"]
    assert info["backend"] == "onnx" and info["answers"] == len(run.task.answers)
    assert info["checkpoint"]["sha256"] == run.checkpoint.sha256 and info["input"]["image_size"] == [32, 32]


def test_the_service_resizes_to_the_pixels_training_reads(onnx_dir):
    """Equal pixels, not close ones: the graph then sees what PyTorch sees (predict's transform is training's)."""
    model = OnnxExport.open(onnx_dir).load()
    transform = build_transform(image_size=32, train=False)
    rng = np.random.default_rng(0)
    for width, height in [*RESIZED, (32, 32)]:
        image = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
        assert np.array_equal(model.pixels(image), transform(image).numpy()), (width, height)


def test_a_folder_that_is_no_onnx_export_is_one_line(best, tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli_in_process("serve", "backend=onnx", f"export={tmp_path / 'empty'}", "port=0", cwd=tmp_path)
    assert_one_line_error(result, "no cmvl_export.json")
    result = cli_in_process("serve", "backend=onnx", f"export={tmp_path / 'empty'}", f"ckpt={best}", cwd=tmp_path)
    assert_one_line_error(result, "backend=onnx serves export=DIR")
