"""Every member of a tiny multitask run (VQA, captioning, grounding, tagging) predicts on the user's images what
`cmvl eval` wrote for the same images and phrases; `task=` picks the member; each option does what it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import cmvl
from cmvl.errors import ConfigError
from cmvl.inference.predict import PredictSettings, predict, predict_requests
from cmvl.inference.requests import Request, RequestError
from cmvl.tasks.prediction import BoxResult, CaptionResult, TagsResult
from tests.conftest import TINY_TRAINING, TINY_WORLD_ANY_TASK, assert_one_line_error, cli_in_process, run_cli

MULTITASK = [
    *TINY_WORLD_ANY_TASK,
    *TINY_TRAINING,
    "task=multitask",
    "+task@task.tasks.tagging=tagging",
    "task.tasks.vqa.min_answer_count=1",
    "task.tasks.caption.beam_size=1",
    "task.tasks.caption.meteor=never",  # METEOR runs Java: slow, and not what is compared here
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",  # training's own validation; the evaluation below reads the whole split
    "samples.count=0",
]


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory) -> tuple[Path, dict[str, list]]:
    """The run's checkpoint and what `cmvl eval` predicted for its validation split (task → records)."""
    from cmvl.evaluation import evaluate_checkpoint

    root = tmp_path_factory.mktemp("multitask")
    result = run_cli("train", *MULTITASK, f"hydra.run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    best = root / "run" / "checkpoints" / "best.ckpt"
    files = evaluate_checkpoint(best, out_dir=root / "eval")["predictions_file"]
    return best, {task: json.loads(Path(file).read_text()) for task, file in files.items()}


@pytest.fixture(scope="module")
def run(trained):
    return cmvl.load_run(trained[0])


def _val_image(tiny_world: Path, image_id: int) -> Path:
    return tiny_world / "val" / f"COCO_val_{image_id:012d}.jpg"


def test_captions_and_tags_are_those_of_cmvl_eval(run, trained, tiny_world):
    evaluated = trained[1]
    captions = {p["image_id"]: p["caption"] for p in evaluated["caption"]}
    ids = sorted(captions)
    images = [_val_image(tiny_world, i) for i in ids]
    written = predict(run, images, task="caption")
    assert all(isinstance(r, CaptionResult) for r in written)
    assert [r.caption for r in written] == [captions[i] for i in ids]
    tags = {p["image_id"]: p for p in evaluated["tagging"]}
    predicted = predict(run, images, task="tagging")
    assert [sorted(a.label for a in r.labels) for r in predicted] == [sorted(tags[i]["labels"]) for i in ids]
    assert all(r.scores == pytest.approx(tags[i]["scores"], abs=2e-6) for r, i in zip(predicted, ids))
    everything = predict(run, images[0], task="tagging", threshold=0.0)
    assert isinstance(everything, TagsResult) and len(everything.labels) == len(run.task.tasks["tagging"].categories)
    assert [a.score for a in everything.labels] == sorted((a.score for a in everything.labels), reverse=True)


def test_boxes_are_those_of_cmvl_eval_in_pixels_of_the_image(run, trained, tiny_world):
    regions = json.loads((tiny_world / "visual_genome" / "region_descriptions.json").read_text())
    phrase_of = {r["region_id"]: r["phrase"] for image in regions for r in image["regions"]}
    evaluated = trained[1]["grounding"]
    requests = [
        Request(_val_image(tiny_world, p["image_id"]), {"phrase": phrase_of[p["region_id"]]}) for p in evaluated
    ]
    results = predict_requests(run, requests, PredictSettings(task="grounding"))
    assert all(isinstance(r, BoxResult) for r in results) and len(results) == len(evaluated) > 0
    for result, record in zip(results, evaluated):
        assert result.box == pytest.approx(record["box"], abs=0.011)  # one step of the 0.01 rounding
    # The box is in pixels of the image as given: the same image twice as large, twice the box.
    image = Image.open(requests[0].image)
    larger = predict(
        run, image.resize((image.width * 2, image.height * 2)), phrase=requests[0].texts["phrase"], task="grounding"
    )
    assert larger.box == pytest.approx([2 * v for v in results[0].box], abs=0.6)


def test_a_multitask_needs_its_member_and_each_member_its_own_input(run, tiny_world):
    image = _val_image(tiny_world, 61)
    with pytest.raises(ConfigError, match="choose a member with task=<vqa|caption|grounding|tagging>"):
        predict(run, image)
    with pytest.raises(ConfigError, match="task=detection: this checkpoint's tasks are"):
        predict(run, image, task="detection")
    with pytest.raises(RequestError, match="task=caption takes no question="):
        predict(run, image, task="caption", question="what color is the circle?")
    with pytest.raises(RequestError, match="task=grounding takes no question= .it takes phrase="):
        predict(run, image, task="grounding", question="what color is the circle?")
    assert predict(run, image, task="vqa", question="what color is the circle?", top_k=2).answers[1].score is not None


def test_beam_size_changes_the_decoding(run, tiny_world, monkeypatch):
    caption = run.task.tasks["caption"]
    widths = []
    generate = caption.framing.generate
    monkeypatch.setattr(caption.framing, "generate", lambda *a, **k: widths.append(k["beam_size"]) or generate(*a, **k))
    predict(run, _val_image(tiny_world, 61), task="caption")
    predict(run, _val_image(tiny_world, 61), task="caption", beam_size=4)
    assert widths == [caption.beam_size, 4]


def test_draw_writes_the_box_on_the_image_and_a_captioner_refuses_a_question(trained, tiny_world, tmp_path):
    image = _val_image(tiny_world, 61)
    drawn = tmp_path / "box.png"
    args = [f"ckpt={trained[0]}", f"image={image}", "task=grounding", "phrase=the red circle", f"draw={drawn}"]
    result = cli_in_process("predict", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "box x=" in result.stdout and Image.open(drawn).size == Image.open(image).size
    assert Image.open(drawn).convert("RGB").tobytes() != Image.open(image).convert("RGB").tobytes()
    refused = cli_in_process(
        "predict", f"ckpt={trained[0]}", f"image={image}", "task=caption", "question=what?", cwd=tmp_path
    )
    assert_one_line_error(refused, "task=caption takes no question= (it reads only the image)")
