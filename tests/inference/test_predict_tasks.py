"""Every member of a tiny multitask run (VQA, captioning, grounding, tagging, detection, classification) predicts on
the user's images what `cmvl eval` wrote for the same images and phrases; `task=` picks the member; each option does
what it says; `cmvl eval` scores the detector on texts it never trained on (`task.queries=[...]`)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import cmvl
from cmvl.errors import ConfigError
from cmvl.predict.pipeline import PredictSettings, predict, predict_requests
from cmvl.predict.requests import Request, RequestError
from cmvl.tasks.prediction import BoxResult, CaptionResult, ClassesResult, DetectionsResult, TagsResult
from tests.conftest import TINY_TRAINING, TINY_WORLD_ANY_TASK, assert_one_line_error, cli_in_process

MULTITASK = [
    *TINY_WORLD_ANY_TASK,
    *TINY_TRAINING,
    "task=multitask",
    "model=detector",  # the family that runs every member, detection too
    "+task@task.tasks.tagging=tagging",
    "+task@task.tasks.detection=detection",
    "+task@task.tasks.classification=classification",
    "task.tasks.classification.head=text",  # the class names travel as the batch's queries
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
    from cmvl.config.compose import compose_config
    from cmvl.evaluation import evaluate_checkpoint
    from cmvl.training.train import run_training

    root = tmp_path_factory.mktemp("multitask")
    run_training(compose_config([*MULTITASK, f"paths.output_dir={root / 'run'}"]))  # in this process: no new one
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
    with pytest.raises(ConfigError, match="choose a member with task=<vqa|caption|grounding|tagging|detection|"):
        predict(run, image)
    with pytest.raises(ConfigError, match="task=retrieval: this checkpoint's tasks are"):
        predict(run, image, task="retrieval")
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


def _detections(records: list[dict], name_of: dict[int, str]) -> list[tuple[str, float, list[float]]]:
    """(query, score, box) of each record, in a fixed order (by query, then score)."""
    found = [(r["query"] if "query" in r else name_of[r["category_id"]], r["score"], r["bbox"]) for r in records]
    return sorted(found, key=lambda d: (d[0], -d[1]))


def _same_detections(got: list, expected: list) -> bool:
    return len(got) == len(expected) and all(
        a[0] == b[0] and a[1] == pytest.approx(b[1], abs=2e-6) and a[2] == pytest.approx(b[2], abs=0.011)
        for a, b in zip(got, expected)
    )


def test_detections_and_classes_are_those_of_cmvl_eval(run, trained, tiny_world):
    detector = run.task.tasks["detection"]
    name_of = dict(zip(detector.query_ids, detector.queries))
    evaluated: dict[int, list[dict]] = {}
    for record in trained[1]["detection"]:
        evaluated.setdefault(record["image_id"], []).append(record)
    ids = sorted(evaluated)
    images = [_val_image(tiny_world, i) for i in ids]
    found = run.predict(images, task="detection", threshold=0.0, top_k=detector.max_detections)
    assert all(isinstance(r, DetectionsResult) and r.queries == detector.queries for r in found)
    for result, image_id in zip(found, ids):
        records = [{"query": d.label, "score": d.score, "bbox": list(d.box)} for d in result.detections]
        assert _same_detections(_detections(records, name_of), _detections(evaluated[image_id], name_of))
    # The defaults: boxes scored at least task.sample_threshold, best first; top_k keeps the best.
    default = run.predict(images[0], task="detection")
    assert [d.score for d in default.detections] == sorted((d.score for d in found[0].detections), reverse=True)[
        : len(default.detections)
    ] and all(d.score >= detector.sample_threshold for d in default.detections)
    assert run.predict(images[0], task="detection", threshold=0.0, top_k=2).detections == found[0].detections[:2]
    classes = {p["image_id"]: p for p in trained[1]["classification"]}
    ranked = run.predict([_val_image(tiny_world, i) for i in sorted(classes)], task="classification")
    assert all(isinstance(r, ClassesResult) for r in ranked)
    assert [[c.label for c in r.classes] for r in ranked] == [classes[i]["top_k"] for i in sorted(classes)]
    assert [r.classes[0].score for r in ranked] == pytest.approx([classes[i]["score"] for i in sorted(classes)])


def test_new_queries_are_found_in_pixels_of_the_image_and_bad_ones_are_refused(run, tiny_world):
    from cmvl.batch import TextQueries
    from cmvl.models.families.detector import Detections
    from cmvl.tasks.prediction import Detection, PredictOptions, PredictTargets

    image = _val_image(tiny_world, 61)
    asked = run.predict(image, task="detection", queries=["red circle", "square"], threshold=0.0)
    grid_tokens = 16  # 32 px images, a 4×4 grid: every (token, query) pair is one detection
    assert asked.queries == ["red circle", "square"] and len(asked.detections) == 2 * grid_tokens
    own = {
        d.box: d.score for d in run.predict(image, task="detection", threshold=0.0).detections if d.label == "square"
    }
    # A query's scores do not depend on the other queries asked with it (task.condition=none).
    assert {d.box: d.score for d in asked.detections if d.label == "square"} == pytest.approx(own, abs=2e-6)
    for queries, needle in [
        (["qqxzv"], "query 'qqxzv': none of its words is in the model's vocabulary"),
        (["square", "square "], "query 'square' is given twice"),
        (["square", " "], "a query is empty"),
    ]:
        with pytest.raises(RequestError, match=needle):
            run.predict(image, task="detection", queries=queries)
    with pytest.raises(RequestError, match="task=tagging takes no queries="):
        run.predict(image, task="tagging", queries=["square"])
    # Boxes are in pixels of each image as given: x, y, w, h of a unit box scaled by that image's size.
    batch = SimpleNamespace(
        targets=PredictTargets(image_size=torch.tensor([[200.0, 100.0]])),
        queries=TextQueries(["square"], torch.zeros(1, 1), torch.ones(1, 1)),
    )
    made = Detections(boxes=torch.tensor([[[0.5, 0.5, 0.5, 0.5]]]), logits=torch.tensor([[[3.0]]]))
    (result,) = run.task.tasks["detection"].predict_results(made, batch, PredictOptions(threshold=0.5))
    assert result.detections == [Detection("square", pytest.approx(0.952574), (50.0, 25.0, 100.0, 50.0))]


def test_jsonl_lines_name_their_queries_and_draw_shows_the_boxes(run, trained, tiny_world, tmp_path):
    image = _val_image(tiny_world, 61)
    lines = [
        {"image": str(image), "queries": ["red circle", "square"], "id": 1},
        {"image": str(image)},
        {"image": str(image), "query": "circle"},
        {"image": str(image), "queries": "circle"},
    ]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "found.jsonl"
    args = [f"ckpt={trained[0]}", f"input={requests}", "task=detection", "threshold=0", f"out={out}", "on_error=skip"]
    result = cli_in_process("predict", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("queries") for r in records[:3]] == [
        ["red circle", "square"],
        run.task.tasks["detection"].queries,
        ["circle"],
    ]
    assert (
        records[0]["id"] == 1
        and "requests.jsonl line 4" in records[3]["error"]
        and "list of strings" in records[3]["error"]
    )
    expected = run.predict(image, task="detection", queries=["circle"], threshold=0.0).to_json()
    assert json.loads(json.dumps(expected))["detections"] == records[2]["detections"]
    drawn = tmp_path / "boxes.png"
    args = [f"ckpt={trained[0]}", f"image={image}", "task=detection", "queries=red circle,square", "threshold=0"]
    result = cli_in_process("predict", *args, "top_k=3", f"draw={drawn}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.strip().splitlines()) == 1 + 3  # the drawn file, then the 3 best boxes
    assert Image.open(drawn).size == Image.open(image).size
    assert Image.open(drawn).convert("RGB").tobytes() != Image.open(image).convert("RGB").tobytes()


def test_eval_scores_the_detector_on_texts_it_never_trained_on(trained, tmp_path):
    from cmvl.evaluation import evaluate_checkpoint

    best, evaluated = trained
    key = "task.tasks.detection.queries"
    written = evaluate_checkpoint(best, out_dir=tmp_path, overrides=[f"{key}=[red circle,square]"])
    metrics = written["metrics"]
    assert {"val/detection/heldout_AP50", "val/detection/seen_AP50"} <= set(metrics)  # red circle / square
    records = json.loads(Path(written["predictions_file"]["detection"]).read_text())
    assert {r["query"] for r in records} == {"red circle", "square"}
    name_of = {1: "circle", 2: "square", 3: "triangle"}  # the shapes world's categories, as trained
    before = [d for d in _detections(evaluated["detection"], name_of) if d[0] == "square"]
    assert _same_detections([d for d in _detections(records, name_of) if d[0] == "square"], before)
    for override, error, needle in [
        (f"{key}=[qqxzv]", ConfigError, "none of the words of 'qqxzv'"),
        (f"{key}=phrases", ConfigError, "trained on task.queries=categories"),
        ("task.tasks.detection.heldout_queries=[square]", ConfigError, "cmvl eval cannot override it"),
        (f"{key}=[square,square]", ConfigError, "'square' is given twice"),
    ]:
        with pytest.raises(error, match=needle):
            cmvl.load_run(best, overrides=[override])
    refused = cli_in_process(
        "eval", f"ckpt={best}", f"out={tmp_path / 'refused'}", f"{key}=[blue hexagon]", cwd=tmp_path
    )
    assert_one_line_error(refused, "'blue hexagon' names no object of this split")
