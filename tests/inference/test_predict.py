"""Prediction on a user's own images with a restored VQA run (the session's tiny run): the answers `cmvl eval` wrote,
at any batch size but for near-ties; each image decoded and encoded once; nothing but the checkpoint read; bf16."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import cmvl
from cmvl.errors import ConfigError
from cmvl.predict import pipeline as predict_module
from cmvl.predict.pipeline import PredictSettings, predict, predict_requests
from cmvl.predict.requests import Request, RequestError
from cmvl.tasks.prediction import AnswerResult
from tests.conftest import REPO, dataset_untouched

NEAR_TIE = 1e-4  # top-two probability gap under which two batchings may rank the two answers either way


@pytest.fixture(scope="module")
def best(finished_tiny_run) -> Path:
    return finished_tiny_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def run(best):
    return cmvl.load_run(best)


@pytest.fixture(scope="module")
def val_requests(tiny_world) -> list[tuple[int, Request]]:
    """Every validation question of the tiny world as a request (question id, request)."""
    questions = json.loads((tiny_world / "v2_OpenEnded_mscoco_val_questions.json").read_text())["questions"]
    return [
        (
            q["question_id"],
            Request(tiny_world / "val" / f"COCO_val_{q['image_id']:012d}.jpg", {"question": q["question"]}),
        )
        for q in questions
    ]


def _near_tie(result: AnswerResult) -> bool:
    return result.answers[0].score - result.answers[1].score < NEAR_TIE


def test_predicting_the_validation_rows_gives_the_answers_of_cmvl_eval_at_any_batch_size(
    run, best, val_requests, tmp_path
):
    from cmvl.evaluation import evaluate_checkpoint

    written = json.loads(Path(evaluate_checkpoint(best, out_dir=tmp_path)["predictions_file"]).read_text())
    evaluated = {p["question_id"]: p["answer"] for p in written}
    requests = [request for _, request in val_requests]
    by_64 = predict_requests(run, requests, PredictSettings(batch_size=64))
    by_1 = predict_requests(run, requests, PredictSettings(batch_size=1))
    assert len(by_64) == len(requests) == len(evaluated) and all(isinstance(r, AnswerResult) for r in by_64)
    differ_from_eval = [q for (q, _), r in zip(val_requests, by_64) if r.answer != evaluated[q] and not _near_tie(r)]
    differ_by_batch = [k for k, (a, b) in enumerate(zip(by_64, by_1)) if a.answer != b.answer and not _near_tie(a)]
    near_ties = sum(_near_tie(r) for r in by_64)
    print(f"{len(requests)} questions, {near_ties} near-ties (top-two gap < {NEAR_TIE})")
    assert differ_from_eval == [] and differ_by_batch == []
    assert sum(r.answer == evaluated[q] for (q, _), r in zip(val_requests, by_64)) >= len(requests) - near_ties


def test_a_file_a_pil_image_and_a_list_of_them(run, val_requests):
    path, question = val_requests[0][1].image, val_requests[0][1].texts["question"]
    result = predict(run, path, question=question, top_k=3)
    assert isinstance(result, AnswerResult) and len(result.answers) == 3
    scores = [a.score for a in result.answers]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert predict(run, Image.open(path), question=question, top_k=3) == result
    listed = predict(run, [path, Image.open(path)], question=[question, "how many shapes are there?"])
    assert [type(r) for r in listed] == [AnswerResult, AnswerResult] and listed[0].answers[0] == result.answers[0]
    assert result.to_json()["answer"] == result.answer and result.lines()[0].endswith(result.answer)
    with pytest.raises(ConfigError, match="2 texts for 1 images"):
        predict(run, [path], question=[question, question])


def test_bf16_inference_runs_on_the_cpu_close_to_float32(run, val_requests):
    requests = [request for _, request in val_requests[:20]]
    full = predict_requests(run, requests)
    half = predict_requests(run, requests, PredictSettings(precision="bf16"))
    gaps = [abs(a.answers[0].score - b.answers[0].score) for a, b in zip(full, half)]
    assert 0 < max(gaps) < 0.05  # bfloat16 did compute (not bit-identical), and stays close


def test_each_image_is_decoded_and_encoded_once_however_many_questions_it_has(run, val_requests, monkeypatch):
    opened, batches = [], []
    open_image, forward = predict_module.open_input_image, run.task.predict_forward
    monkeypatch.setattr(predict_module, "open_input_image", lambda image: opened.append(image) or open_image(image))
    monkeypatch.setattr(run.task, "predict_forward", lambda m, b, o: batches.append(b) or forward(m, b, o))
    requests = [request for _, request in val_requests]  # 5 questions per image, images in turn
    mixed = requests[::5] + requests[1::5]  # every image twice, far apart
    results = predict_requests(run, mixed, PredictSettings(batch_size=8))
    images = {str(r.image) for r in mixed}
    assert len(opened) == len(images) and {str(p) for p in opened} == images
    assert sum(len(b.images) for b in batches) == len(images)  # grouped: no image twice in a batch, nor in two
    assert [r.answer for r in results] == [r.answer for r in predict_requests(run, mixed)]


def test_on_error_skip_records_each_bad_request_and_answers_the_rest(run, val_requests, tmp_path):
    assert run.tokenizer.unk_token_id is not None  # the tiny run's word-piece tokenizer: "qqxzv" is unknown
    good = val_requests[0][1]
    bad_file = tmp_path / "bad.png"
    bad_file.write_bytes(b"no image")
    requests = [
        good,
        Request(tmp_path / "gone.png", {"question": "what color?"}, origin="line 2"),
        RequestError("line 3: not JSON"),
        Request(bad_file, {"question": "what color?"}, origin="line 4"),
        Request(good.image, {"question": "   "}, origin="line 5"),
        Request(good.image, {"question": "qqxzv"}, origin="line 6"),
        Request(good.image, {"phrase": "the circle"}, origin="line 7"),
        Request(good.image, {}, origin="line 8"),
    ]
    results = predict_requests(run, requests, PredictSettings(on_error="skip"))
    assert isinstance(results[0], AnswerResult)
    errors = [r.error for r in results[1:]]
    needles = ["line 2: image not found", "line 3: not JSON", "line 4: unreadable image", "line 5: question is empty"]
    needles += [
        "line 6: question 'qqxzv': none of its words",
        "line 7: task=vqa takes no phrase=",
        "line 8: task=vqa needs",
    ]
    assert len(errors) == len(needles) and all(e.startswith(n) for e, n in zip(errors, needles)), errors


def test_prediction_reads_only_the_checkpoint_and_the_image(best, tiny_world, tmp_path, monkeypatch):
    """No file of the world the run was trained on is opened (the image predicted on is a copy outside it), no
    source is built and no world generated, with the dataset's root pointing at a folder that does not exist."""
    image = tmp_path / "photo.jpg"
    shutil.copy(sorted((tiny_world / "val").glob("*.jpg"))[0], image)
    with dataset_untouched(monkeypatch, tiny_world, tmp_path / "gone") as opened:
        run = cmvl.load_run(best, overrides=[f"dataset.root={tmp_path / 'gone'}"])
        result = predict(run, image, question="what color is the circle?")
    assert opened == [] and isinstance(result, AnswerResult)


def test_the_readme_example_runs(best, tiny_world, tmp_path, monkeypatch, capsys):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Use a trained model: `cmvl predict`") :]
    code = re.search(r"```python\n(.*?)```", section[: section.index("\n#", 5)], re.S).group(1)
    placeholder = "outputs/<date>/<time>-<hex>/checkpoints/best.ckpt"
    assert placeholder in code
    for name, image in zip(["photo.jpg", "a.jpg", "b.jpg"], sorted((tiny_world / "val").glob("*.jpg"))):
        shutil.copy(image, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace(placeholder, str(best)), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[1].count("'task': 'vqa'") == 2
