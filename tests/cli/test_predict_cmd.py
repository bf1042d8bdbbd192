"""`cmvl predict`: one image printed, a JSON-lines file or a folder written as records; each bad input one line and
exit 2, with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, cli_in_process


@pytest.fixture(scope="module")
def best(finished_tiny_run) -> Path:
    return finished_tiny_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def photos(tiny_world, tmp_path_factory) -> Path:
    """Three validation images of the tiny world, copied into a folder of the user's (one in a subfolder)."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    for image, name in zip(sorted((tiny_world / "val").glob("*.jpg"))[:3], ["a.jpg", "b.jpg", "more/c.jpg"]):
        shutil.copy(image, folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_one_image_prints_the_top_answers_end_to_end(best, photos):
    from cmvl.predict.pipeline import predict
    from cmvl.run import load_run

    result = cli_in_process(
        "predict",
        f"ckpt={best}",
        f"image={photos / 'a.jpg'}",
        "question=What color is the circle?",
        "top_k=3",
        cwd=photos,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    expected = predict(load_run(best), photos / "a.jpg", question="What color is the circle?", top_k=3)
    assert lines == expected.lines() and len(lines) == 3


def test_a_jsonl_file_becomes_one_record_per_line_in_order(best, photos, tmp_path):
    requests = tmp_path / "requests.jsonl"
    lines = [
        {"image": str(photos / "a.jpg"), "question": "how many shapes are there?", "id": 7},
        {"image": "b.jpg", "question": "what color is the square?"},  # relative to the file's folder
        {"image": str(photos / "a.jpg"), "question": "is there a circle?"},
    ]
    shutil.copy(photos / "b.jpg", tmp_path / "b.jpg")
    requests.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    out = tmp_path / "predictions.jsonl"
    result = cli_in_process("predict", f"ckpt={best}", f"input={requests}", f"out={out}", "batch_size=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question"] for r in records] == [line["question"] for line in lines] and records[0]["id"] == 7
    assert all(
        r["task"] == "vqa" and r["answer"] == r["answers"][0]["label"] and len(r["answers"]) == 5 for r in records
    )
    assert "predictions (3, 0 failed)" in result.stdout


def test_a_bad_line_is_named_and_stops_with_nothing_written_or_is_recorded_with_on_error_skip(best, photos, tmp_path):
    requests = tmp_path / "requests.jsonl"
    good = json.dumps({"image": str(photos / "a.jpg"), "question": "what color is the circle?"})
    requests.write_text(f'{good}\n{{"image": "a.jpg", "question": \n{json.dumps({"image": "gone.jpg"})}\n{good}\n')
    out = tmp_path / "predictions.jsonl"
    stopped = cli_in_process("predict", f"ckpt={best}", f"input={requests}", f"out={out}", cwd=tmp_path)
    assert_one_line_error(stopped, "requests.jsonl line 2: not JSON")
    assert not out.exists()
    skipped = cli_in_process(
        "predict", f"ckpt={best}", f"input={requests}", f"out={out}", "on_error=skip", cwd=tmp_path
    )
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [("error" in r) for r in records] == [False, True, True, False]
    assert records[1]["error"].startswith("requests.jsonl line 2: not JSON")
    assert records[2]["error"].startswith("requests.jsonl line 3: task=vqa needs question=")
    assert records[0]["answers"] == records[3]["answers"] and "(4, 2 failed)" in skipped.stdout


def test_a_folder_of_images_with_one_question(best, photos, tmp_path):
    out = tmp_path / "folder.jsonl"
    arguments = [f"images={photos}", "question=is there a circle?", f"out={out}", "num_workers=1"]  # decoded aside
    result = cli_in_process("predict", f"ckpt={best}", *arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in records] == ["a.jpg", "b.jpg", "more/c.jpg"]
    assert all(r["question"] == "is there a circle?" and r["answer"] for r in records)


@pytest.mark.parametrize(
    "arguments, needles",
    [
        (["image={photos}/gone.jpg", "question=what?"], ["image not found", "gone.jpg"]),
        (["image={photos}/a.jpg", "question= "], ["question is empty"]),
        (["image={photos}/a.jpg", "phrase=the circle"], ["task=vqa takes no phrase="]),
        (["image={photos}/a.jpg", "question=what?", "task=caption"], ["task=caption", "tasks are vqa"]),
        (["image={photos}/a.jpg", "images={photos}", "question=what?"], ["give one of", "image= and images="]),
        (["image={photos}/a.jpg", "question=what?", "draw=box.png"], ["draw= draws boxes", "task=vqa gives none"]),
        (["image={photos}/a.jpg", "question=what?", "queries=red circle"], ["task=vqa takes no queries="]),
        (["image={photos}/a.jpg", "queries=red circle,,square"], ["queries=", "an empty text"]),
        (["image={photos}/a.jpg", "query=circle", "queries=a,b"], ["query=TEXT or queries=A,B"]),
        (["images={photos}/more/c.jpg", "question=what?"], ["images=", "not a folder"]),
        (["input={photos}/none.jsonl"], ["input=", "no such file"]),
        (["image={photos}/a.jpg", "question=what?", "precision=fp8"], ["precision=fp8", "32, bf16"]),
        (["image={photos}/a.jpg", "question=what?", "device=cuda:7"], ["device=cuda:7"]),
    ],
)
def test_bad_input_is_one_line(best, photos, tmp_path, arguments, needles):
    """(Every kind of bad request is checked in tests/inference/test_predict.py; here the command's line and exit.)"""
    arguments = [a.format(photos=photos) for a in arguments]
    result = cli_in_process("predict", f"ckpt={best}", *arguments, cwd=tmp_path)
    assert_one_line_error(result, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written (draw= too)


def test_a_file_that_is_no_checkpoint_is_one_line(photos, tmp_path):
    fake = tmp_path / "model.ckpt"
    fake.write_bytes(b"not a checkpoint")
    result = cli_in_process("predict", f"ckpt={fake}", f"image={photos / 'a.jpg'}", "question=what?", cwd=tmp_path)
    assert_one_line_error(result, "model.ckpt")


def test_help_lists_every_key(tmp_path):
    from cmvl.cli.predict_cmd import PREDICT

    result = cli_in_process("predict", "--help", cwd=tmp_path)
    assert result.returncode == 0 and all(f"{o.key}=" in result.stdout for o in PREDICT.options)
