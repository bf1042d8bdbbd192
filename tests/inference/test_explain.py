"""cmvl explain: the maps' maths (Grad-CAM, rollout), the command's files on the session's tiny VQA run, the fusions
and inputs it refuses in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cmvl.errors import ConfigError, UserError
from cmvl.explain.maps import LAYOUTS, RecordedAttention, text_image_relevance
from tests.conftest import assert_one_line_error, cli_in_process


@pytest.fixture(scope="module")
def tiny_run(finished_tiny_run):
    from cmvl.run import load_run

    return load_run(finished_tiny_run / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def val_image(tiny_world):
    return sorted((tiny_world / "val").glob("*.jpg"))[0]


def test_gradcam_is_attention_times_the_positive_gradient_averaged_over_heads():
    torch.manual_seed(0)
    weights = torch.rand(2, 3, 4, 6, requires_grad=True)  # B×heads×text×image
    slope = torch.randn(2, 3, 4, 6)
    score = (weights * slope).sum(dim=(1, 2, 3))  # d score / d weights = slope
    recorded = RecordedAttention([weights], LAYOUTS["text_to_vision"])
    relevance = text_image_relevance(recorded, "gradcam", score, text_length=4, cells=6)
    expected = (weights.detach() * slope.clamp(min=0)).mean(dim=1)
    torch.testing.assert_close(relevance, expected)
    assert (relevance >= 0).all() and (relevance > (weights * slope).detach().mean(dim=1)).any()  # negatives gone
    raw = text_image_relevance(recorded, "attention", None, text_length=4, cells=6)
    torch.testing.assert_close(raw, weights.detach().mean(dim=1))


def test_rollout_follows_attention_back_through_the_layers_and_reads_text_rows_behind_cls():
    torch.manual_seed(0)
    layers = [torch.rand(1, 2, 5, 5).softmax(dim=-1) for _ in range(2)]  # [CLS; 2 text; 2 image]
    recorded = RecordedAttention(layers, LAYOUTS["joint"])
    eye = torch.eye(5)
    steps = [(a.mean(dim=1) + eye) / (a.mean(dim=1) + eye).sum(dim=-1, keepdim=True) for a in layers]
    expected = (steps[1] @ steps[0])[:, 1:3, -2:]
    relevance = text_image_relevance(recorded, "rollout", None, text_length=2, cells=2)
    torch.testing.assert_close(relevance, expected)


def test_explain_command_writes_a_picture_per_word_and_the_maps(tiny_run, finished_tiny_run, val_image, tmp_path):
    out = tmp_path / "maps"
    args = ("explain", f"ckpt={finished_tiny_run / 'checkpoints' / 'last.ckpt'}", f"image={val_image}")
    result = cli_in_process(*args, "question=What color is the circle?", f"out={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "maps.json").read_text())
    assert record["maps_npy"] == ["whole text", "What", "color", "is", "the", "circle", "?"]
    assert record["title"].startswith("answer: ") and record["title"] in result.stdout
    assert sorted(p.name for p in out.glob("*.png")) == sorted(record["pictures"]) and len(record["pictures"]) == 7
    maps = np.load(out / "maps.npy")
    assert maps.shape == (7, 4, 4)  # whole text + 6 words on the 4×4 grid of a 32 px image
    assert (maps >= 0).all() and maps[0].max() > maps[0].min()
    np.testing.assert_allclose(maps[0], maps[1:].mean(axis=0), rtol=1e-5)  # one token per word here

    from cmvl.inference.explain import explain

    answer = tiny_run.task.answers[
        int(tiny_run.task.eval_forward(tiny_run.model, _one_batch(tiny_run, val_image)).logits.argmax())
    ]
    assert record["title"].startswith(f"answer: {answer} (")  # the explained answer is the predicted one
    raw = explain(tiny_run, image=val_image, text="What color is the circle?", method="attention")
    np.testing.assert_allclose(raw.word_maps.reshape(6, -1).sum(axis=1), 1.0, rtol=1e-4)  # softmax rows


def _one_batch(run, image):
    from cmvl.batch import Batch
    from cmvl.inference.inputs import run_images, run_texts

    ids, mask = run_texts(run, ["What color is the circle?"])
    zero = torch.zeros(1, dtype=torch.long)
    return Batch(run_images(run, [image]), zero, zero, zero, "vqa", None, ids, mask, ["What color is the circle?"])


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        (("method=saliency", "question=What?"), "method=saliency: choose one of attention, gradcam, rollout"),
        (("method=rollout", "question=What color is the circle?"), "method=rollout needs a single-stream fusion"),
        (("question=  ",), "question= is empty"),
        (("phrase=the red circle",), "a vqa checkpoint takes question=, not phrase="),
    ],
)
def test_bad_requests_are_one_line(finished_tiny_run, val_image, tmp_path, arguments, needle):
    ckpt = finished_tiny_run / "checkpoints" / "last.ckpt"
    result = cli_in_process(
        "explain", f"ckpt={ckpt}", f"image={val_image}", f"out={tmp_path / 'o'}", *arguments, cwd=tmp_path
    )
    assert_one_line_error(result, needle)
    assert not (tmp_path / "o").exists()


def test_a_missing_image_is_one_line(finished_tiny_run, tmp_path):
    ckpt = finished_tiny_run / "checkpoints" / "last.ckpt"
    args = (f"ckpt={ckpt}", f"image={tmp_path / 'nope.jpg'}", "question=What?", f"out={tmp_path / 'o'}")
    assert_one_line_error(cli_in_process("explain", *args, cwd=tmp_path), "nope.jpg: no such file")


def test_fusions_without_text_to_image_attention_are_refused_and_merged_has_rollout(tiny_run, val_image):
    from cmvl.inference.explain import explain
    from cmvl.models.fusion.concat import ConcatFusion
    from cmvl.models.fusion.graph import GraphFusion
    from cmvl.models.fusion.merged import MergedFusion
    from cmvl.models.fusion.residual import GatedResidualFusion

    original = tiny_run.model.fusion
    try:
        tiny_run.model.fusion = ConcatFusion(dim=32).eval()
        with pytest.raises(ConfigError, match="fusion ConcatFusion records no text→image attention"):
            explain(tiny_run, image=val_image, text="What color is the circle?", method="gradcam")
        tiny_run.model.fusion = MergedFusion(dim=32, layers=2, heads=2).eval()
        rolled = explain(tiny_run, image=val_image, text="What color is the circle?", method="rollout")
        assert rolled.question_map.shape == (4, 4) and rolled.question_map.max() > 0
        grad = explain(tiny_run, image=val_image, text="What color is the circle?", method="gradcam")
        assert not np.allclose(grad.question_map, rolled.question_map)
        for fusion in (GraphFusion(dim=32, heads=2), GatedResidualFusion(dim=32, heads=2)):
            tiny_run.model.fusion = fusion.eval()
            other = explain(tiny_run, image=val_image, text="What color is the circle?", method="gradcam")
            assert other.question_map.shape == (4, 4) and other.question_map.max() > 0
    finally:
        tiny_run.model.fusion = original
    with pytest.raises(UserError, match="knows none of its words"):
        explain(tiny_run, image=val_image, text="zzzqqq xxyyzz", method="gradcam")


def test_grounding_maps_explain_the_pointed_cell_and_retrieval_maps_the_match(tiny_run, val_image):
    from cmvl.explain.relevance import batch_relevance, encode_for_maps, word_token_mask
    from cmvl.inference.inputs import run_images, run_texts
    from cmvl.tasks.grounding import GroundingTask
    from cmvl.tasks.retrieval import RetrievalTask

    ids, mask = run_texts(tiny_run, ["the red circle"])
    vision, text = encode_for_maps(tiny_run.model, run_images(tiny_run, [val_image]), ids, mask)
    words = word_token_mask(ids, mask, list(tiny_run.tokenizer.all_special_ids))
    torch.manual_seed(0)
    for task in (GroundingTask(), RetrievalTask(itm=True)):
        tiny_run.model.heads[task.name] = task.build_head(32).eval()  # an untrained head of that task
        try:
            maps = batch_relevance(task, tiny_run.model, vision, text, words, "gradcam")
        finally:
            del tiny_run.model.heads[task.name]
        assert maps.question_maps.shape == (1, 4, 4) and (maps.question_maps >= 0).all()
        assert maps.question_maps.max() > 0
        if isinstance(task, GroundingTask):
            x0, y0, x1, y1 = maps.output.boxes[0].tolist()
            assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1 and maps.output.titles[0].startswith("box (")
        else:
            assert maps.output.titles[0].startswith("match logit ")
    with pytest.raises(ConfigError, match="task=retrieval without task.itm"):
        batch_relevance(RetrievalTask(), tiny_run.model, vision, text, words, "gradcam")
