"""dataset=vqa_v2 reads the official files: the real questions fixture, missing images, the table cache, and
train → eval (val metrics, test-dev submission file) through the CLI on an official-layout folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import cmvl.data.sources.vqa_v2 as vqa_v2
from cmvl.data.sources.vqa_v2 import VQAv2Source
from cmvl.errors import ConfigError, DataError
from tests.conftest import FIXTURES, cli_in_process

REAL = FIXTURES / "vqa_v2"
REAL_QUESTIONS = json.loads((REAL / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
PRESENT_IMAGE = 262148  # the one fixture image; the other 4 images of the 18 questions are absent


def test_real_questions_file_reads_as_a_questions_only_split(cache_dir, capfd):
    source = VQAv2Source(root=str(REAL), split="test", subtypes={"test": "val2014"})
    table = source.table("qa", "test")
    kept = [q for q in REAL_QUESTIONS["questions"] if q["image_id"] == PRESENT_IMAGE]
    assert table.column("question_id").to_pylist() == [q["question_id"] for q in kept]
    assert table.column("question").to_pylist() == [q["question"] for q in kept]
    assert table.column("answers").to_pylist() == [None] * len(kept)
    image = table.column("image")[0].as_py()
    assert image == "val2014/COCO_val2014_000000262148.jpg" and (REAL / image).is_file()
    assert "skipping 15 of 18 rows: 4 of 5 images are missing" in capfd.readouterr().err


def test_missing_images_error_policy_and_missing_annotations(cache_dir):
    source = VQAv2Source(root=str(REAL), subtypes={"test": "val2014", "val": "val2014"}, missing_images="error")
    with pytest.raises(DataError, match="4 of 5 images are missing under .* e.g. val2014/COCO_val2014_000000131089"):
        source.table("qa", "test")
    with pytest.raises(DataError, match="annotations file not found: .*v2_mscoco_val2014_annotations.json"):
        source.table("qa", "val")


def _official_folder(root: Path) -> Path:
    """train2014 / val2014 (questions from the real fixture + answers in the official annotation layout) and
    test-dev2015 (questions only), with the real image under each subtype's COCO file name."""
    answers = {"Where is he looking?": "down", "What are the people in the background doing?": "watching"}
    for subtype in ("train2014", "val2014", "test-dev2015"):
        doc = {**REAL_QUESTIONS, "data_subtype": subtype}
        (root / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(json.dumps(doc))
        image_subtype = subtype.replace("test-dev", "test")
        (root / image_subtype).mkdir(exist_ok=True)
        os.symlink(
            REAL / "val2014" / f"COCO_val2014_{PRESENT_IMAGE:012d}.jpg",
            root / image_subtype / f"COCO_{image_subtype}_{PRESENT_IMAGE:012d}.jpg",
        )
        if subtype.startswith("test"):
            continue
        annotations = []
        for q in doc["questions"]:
            answer = answers.get(q["question"], "skateboard")
            annotations.append(
                {
                    "question_type": "what",
                    "multiple_choice_answer": answer,
                    "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)],
                    "image_id": q["image_id"],
                    "answer_type": "other",
                    "question_id": q["question_id"],
                }
            )
        (root / f"v2_mscoco_{subtype}_annotations.json").write_text(json.dumps({**doc, "annotations": annotations}))
    return root


def test_table_is_cached_and_rebuilt_when_a_file_changes(tmp_path, cache_dir, monkeypatch):
    root = _official_folder(tmp_path)
    first = VQAv2Source(root=str(root)).table("qa", "val")
    calls = []
    real_reader = vqa_v2.read_vqa_v2
    monkeypatch.setattr(vqa_v2, "read_vqa_v2", lambda *a, **k: calls.append(1) or real_reader(*a, **k))
    assert VQAv2Source(root=str(root)).table("qa", "val").equals(first) and calls == []
    annotations = root / "v2_mscoco_val2014_annotations.json"
    doc = json.loads(annotations.read_text())
    doc["annotations"][0]["multiple_choice_answer"] = "up"
    annotations.write_text(json.dumps(doc))
    changed = VQAv2Source(root=str(root)).table("qa", "val")
    assert calls == [1] and changed.column("multiple_choice_answer")[0].as_py() == "up"


def test_train_then_eval_val_and_test_dev_through_the_cli(tmp_path, cache_dir):
    (tmp_path / "vqa").mkdir()
    root = _official_folder(tmp_path / "vqa")
    run_dir = tmp_path / "run"
    common = ["data.num_workers=0", "task.min_answer_count=1", "data.batch_size=2", "model.dim=32"]
    result = cli_in_process(
        "train",
        "dataset=vqa_v2",
        f"dataset.root={root}",
        "trainer=debug",
        *common,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping 15 of 18 rows" in result.stderr
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    val = cli_in_process("eval", f"ckpt={ckpt}", f"out={tmp_path / 'val'}", cwd=tmp_path)
    assert val.returncode == 0, val.stderr[-3000:]
    assert "val/vqa/acc = " in val.stdout
    test_dev = cli_in_process("eval", f"ckpt={ckpt}", "dataset.split=test-dev", f"out={tmp_path / 'td'}", cwd=tmp_path)
    assert test_dev.returncode == 0, test_dev.stderr[-3000:]
    submission = json.loads((tmp_path / "td" / "predictions_vqa_test-dev.json").read_text())
    kept = [q["question_id"] for q in REAL_QUESTIONS["questions"] if q["image_id"] == PRESENT_IMAGE]
    assert sorted(p["question_id"] for p in submission) == kept
    assert all(set(p) == {"question_id", "answer"} and isinstance(p["answer"], str) for p in submission)
    assert json.loads((tmp_path / "td" / "metrics.json").read_text())["metrics"] == {}


def test_visual_genome_questions_join_training_except_on_evaluation_images(tmp_path, cache_dir, capfd):
    (tmp_path / "vqa").mkdir()
    root = _official_folder(tmp_path / "vqa")
    vg = tmp_path / "vg"
    vg.mkdir()
    records = json.loads((FIXTURES / "visual_genome" / "image_data.json").read_text())
    records[3]["coco_id"] = PRESENT_IMAGE  # VG image 4 is also the val2014 image: its questions must stay out
    (vg / "image_data.json").write_text(json.dumps(records))
    (vg / "question_answers.json").symlink_to(FIXTURES / "visual_genome" / "question_answers.json")
    (vg / "VG_100K").symlink_to(FIXTURES / "visual_genome" / "VG_100K")
    source = VQAv2Source(root=str(root), train_splits=["train2014", "vg"], vg_root=str(vg))
    table = source.table("qa", "train")
    err = capfd.readouterr().err
    assert "left out the Visual Genome questions of 1 images that are also in" in err
    vg_rows = [img for img in table.column("image").to_pylist() if "VG_100K" in img]
    vqa_rows = [img for img in table.column("image").to_pylist() if "VG_100K" not in img]
    assert len(vqa_rows) == 3 and vg_rows and set(vg_rows) == {str((vg / "VG_100K" / "5.jpg").resolve())}
    with pytest.raises(ConfigError, match="dataset.vg_root is required"):
        VQAv2Source(root=str(root), train_splits=["train2014", "vg"])
