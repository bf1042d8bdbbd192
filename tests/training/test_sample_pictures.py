"""Sample pictures: samples spread over distinct images, right / wrong marked by a frame and in words, the tasks'
legends, `(empty)` for an empty caption, and the maps of samples.attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmvl.batch import Batch
from cmvl.errors import ConfigError
from cmvl.tasks.base import EMPTY, SampleNote
from cmvl.training.sample_pictures import (
    CELL,
    add_sample_maps,
    check_sample_maps,
    legend_lines,
    render_grid,
    spread_over_images,
)


def _batch(task: str, image_index: list[int], targets, texts=None, images=None, ids=None, mask=None) -> Batch:
    count = max(image_index) + 1
    index = torch.tensor(image_index)
    pixels = images if images is not None else torch.full((count, 3, 8, 8), 200, dtype=torch.uint8)
    keys = torch.arange(count)
    return Batch(pixels, index, keys, torch.arange(len(index)), task, targets, ids, mask, texts)


def test_samples_are_spread_over_distinct_images_first():
    notes = [SampleNote(image_row=i // 5, lines=[f"q{i}"]) for i in range(20)]  # 5 questions per image
    chosen = spread_over_images(notes, 8)
    assert [n.image_row for n in chosen] == [0, 1, 2, 3, 0, 0, 0, 0]
    assert [n.lines[0] for n in chosen[:5]] == ["q0", "q5", "q10", "q15", "q1"]


def test_vqa_notes_are_marked_right_partly_right_or_wrong():
    from cmvl.tasks.vqa import AnswerLogits, VQATargetsBatch, VQATask

    task = VQATask(min_answer_count=1)
    task.load_state_dict({"answers": ["red", "blue", "yes"]})
    scores = torch.tensor([[1.0, 0, 0], [0.3, 1.0, 0], [0, 0, 1.0]], dtype=torch.float64)
    targets = VQATargetsBatch(torch.arange(3), torch.zeros(3, dtype=torch.long), scores)
    batch = _batch("vqa", [0, 0, 1], targets, texts=["a?", "b?", "c?"])
    logits = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [5.0, 0, 0]])  # always "red"
    notes = task.sample_notes(AnswerLogits(logits), batch, 3)
    assert [n.verdict for n in notes] == ["right", "partly right", "wrong"]
    assert [n.row for n in notes] == [0, 1, 2]


def test_the_picture_frames_each_verdict_and_carries_the_legends():
    from cmvl.tasks.retrieval import RetrievalTask

    panels = [
        (torch.full((3, 8, 8), 255, dtype=torch.uint8), SampleNote(0, ["x"], verdict="right")),
        (torch.full((3, 8, 8), 255, dtype=torch.uint8), SampleNote(1, ["y"], verdict="wrong")),
        (torch.full((3, 8, 8), 255, dtype=torch.uint8), SampleNote(2, ["z"])),
    ]
    legend = legend_lines(panels, [RetrievalTask.sample_legend])
    assert legend[0] == "frame: green = right, orange = partly right, red = wrong"
    assert "+ = one of the image's own" in legend[1]
    with_legend, without = np.asarray(render_grid(panels, legend)), np.asarray(render_grid(panels))
    assert with_legend.shape[0] > without.shape[0]
    top = without.shape[0] - (without.shape[0] - 4)  # the first row of images starts 4 pixels down
    left_edges = [4 + k * (CELL + 4) for k in range(3)]
    frame = [tuple(without[top + CELL // 2, x]) for x in left_edges]
    assert frame[0] == (0, 128, 0) and frame[1] == (255, 0, 0) and frame[2] == (255, 255, 255)


def test_retrieval_notes_say_whether_the_first_caption_is_the_images_own_and_show_empty_captions():
    from cmvl.tasks.retrieval import RetrievalOutputs, RetrievalTask

    task = RetrievalTask()
    image_emb = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    text_emb = torch.tensor([[1.0, 0.0], [0.9, -0.2]])  # caption 0 (image 0's) ranks first for both images
    batch = _batch("retrieval", [0, 1], None, texts=["a red circle", ""])
    notes = task.sample_notes(RetrievalOutputs(image_emb, text_emb, torch.tensor(1.0)), batch, 2)
    assert [n.verdict for n in notes] == ["right", "wrong"]
    assert f"+ {EMPTY}" in notes[1].lines


def test_an_empty_caption_is_shown_as_empty():
    from cmvl.tasks.caption import CaptionTask

    task = CaptionTask.__new__(CaptionTask)  # only sample_notes is run: its decoding is stubbed below

    class Framing:
        def decode(self, tokens):
            return ["" for _ in tokens]

    task.framing = Framing()
    targets = type("Targets", (), {"references": [["a red circle"]]})()
    notes = task.sample_notes(type("Out", (), {"tokens": torch.zeros(1, 3)})(), _batch("caption", [0], targets), 1)
    assert notes[0].lines == [f"pred: {EMPTY}", "ref: a red circle"]


@pytest.fixture(scope="module")
def tiny_run(finished_tiny_run):
    from cmvl.run import load_run

    return load_run(finished_tiny_run / "checkpoints" / "last.ckpt")


def test_samples_attention_draws_the_gradcam_map_of_each_vqa_sample(tiny_run, tiny_world):
    from cmvl.inference.inputs import run_images, run_texts

    images = run_images(tiny_run, sorted((tiny_world / "val").glob("*.jpg"))[:2])
    texts = ["What color is the circle?", "How many shapes are there?"]
    ids, mask = run_texts(tiny_run, texts)
    batch = _batch("vqa", [0, 1], None, texts, images, ids, mask)
    notes = [SampleNote(0, ["a"], row=0), SampleNote(1, ["b"], row=1), SampleNote(1, ["c"])]
    with torch.inference_mode():  # as in a validation loop
        add_sample_maps(tiny_run.task, tiny_run.model, batch, notes, list(tiny_run.tokenizer.all_special_ids))
    assert notes[0].heat.shape == (4, 4) and notes[1].heat.max() > 0 and notes[2].heat is None
    assert not torch.equal(notes[0].heat, notes[1].heat)
    plain = np.asarray(render_grid([(images[0], SampleNote(0, ["a"]))]))
    heated = np.asarray(render_grid([(images[0], notes[0])]))
    assert not np.array_equal(plain, heated)
    check_sample_maps(tiny_run.task, tiny_run.model, image_size=32)  # attention fusion: maps


def test_samples_attention_is_refused_for_a_fusion_without_text_to_image_attention(tiny_run):
    from cmvl.models.fusion.concat import ConcatFusion

    original = tiny_run.model.fusion
    try:
        tiny_run.model.fusion = ConcatFusion(dim=32).eval()
        with pytest.raises(ConfigError, match="samples.attention=true: fusion ConcatFusion records no text→image"):
            check_sample_maps(tiny_run.task, tiny_run.model, image_size=32)
    finally:
        tiny_run.model.fusion = original
