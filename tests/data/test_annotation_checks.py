"""Annotation files are checked as a whole: every record against its file kind's layout, ids unique where files are
joined by id; every mistake is one line naming the file, the record, the key and what was expected."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from cmvl.data.jsonfile import load_json, required
from cmvl.data.sources.coco import read_coco_captions, read_coco_instances, read_karpathy_captions
from cmvl.data.sources.visual_genome import read_image_records, read_visual_genome_regions
from cmvl.data.sources.vqa_v2 import read_vqa_v2
from cmvl.errors import DataError
from tests.conftest import FIXTURES, TINY_TRAINING, assert_one_line_error, cli_in_process

PATTERN = "{subtype}/COCO_{subtype}_{image_id:012d}.jpg"
IMAGE_ID = 262148  # the image of the VQA v2 fixture


def _questions(n: int = 60) -> dict:
    questions = [
        {"image_id": IMAGE_ID, "question": f"What is {i}?", "question_id": IMAGE_ID * 1000 + i} for i in range(n)
    ]
    return {"data_subtype": "val2014", "questions": questions}


def _annotations(questions: dict) -> dict:
    annotations = [
        {
            "question_id": q["question_id"],
            "image_id": q["image_id"],
            "answers": [{"answer": "yes", "answer_id": k + 1} for k in range(10)],
            "answer_type": "yes/no",
            "question_type": "is",
            "multiple_choice_answer": "yes",
        }
        for q in questions["questions"]
    ]
    return {"annotations": annotations}


def _write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _read(tmp_path: Path, questions: dict, annotations: dict | None):
    q = _write(tmp_path / "questions.json", questions)
    a = _write(tmp_path / "annotations.json", annotations) if annotations is not None else None
    return read_vqa_v2(q, a, image_pattern=PATTERN)


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (
            lambda q, a: q["questions"][51].pop("question_id"),
            ["questions.json", "questions[51] has no key 'question_id'", "an integer"],
        ),
        (lambda q, a: q["questions"][7].update(question=None), ["questions[7].question is null, expected a string"]),
        (lambda q, a: q["questions"][3].update(image_id=1.5), ["questions[3].image_id is 1.5, expected an integer"]),
        (lambda q, a: q["questions"][2].update(image_id=True), ["questions[2].image_id is true, expected an integer"]),
        (lambda q, a: q.pop("data_subtype"), ["the document has no key 'data_subtype' (expected a string)"]),
        (lambda q, a: q.update(questions={}), ["questions is an object, expected a list"]),
        (lambda q, a: q["questions"].__setitem__(9, "x"), ['questions[9] is "x", expected an object']),
        (
            lambda q, a: a["annotations"][40]["answers"][4].update(answer=5),
            ["annotations.json", "annotations[40].answers[4].answer is 5, expected a string"],
        ),
        (lambda q, a: a["annotations"][12].pop("answer_type"), ["annotations[12] has no key 'answer_type'"]),
        (lambda q, a: a["annotations"][0].update(answers="yes"), ['annotations[0].answers is "yes", expected a list']),
    ],
)
def test_a_bad_record_anywhere_names_file_record_key_and_expectation(tmp_path, edit, needles):
    questions = _questions()
    annotations = _annotations(questions)
    edit(questions, annotations)
    with pytest.raises(DataError) as caught:
        _read(tmp_path, questions, annotations)
    for needle in needles:
        assert needle in str(caught.value)


def test_string_ids_in_one_file_and_integers_in_the_other_are_refused(tmp_path):
    questions = _questions()
    annotations = _annotations(questions)
    for ann in annotations["annotations"]:
        ann["question_id"] = str(ann["question_id"])
    with pytest.raises(
        DataError, match=r"annotations.json: annotations\[0\].question_id is \"262148000\", expected an"
    ):
        _read(tmp_path, questions, annotations)


@pytest.mark.parametrize("which", ["questions", "annotations"])
def test_repeated_question_ids_are_refused_with_the_id_and_the_count(tmp_path, which):
    questions = _questions()
    annotations = _annotations(questions)
    records = questions["questions"] if which == "questions" else annotations["annotations"]
    repeated = records[5]["question_id"]
    for k in (6, 7):
        records[k]["question_id"] = repeated
    records[20]["question_id"] = records[21]["question_id"]
    with pytest.raises(DataError) as caught:
        _read(tmp_path, questions, annotations)
    message = str(caught.value)
    assert f"{which}.json" in message and f"question_id {repeated} occurs 3 times" in message
    assert "2 question_id values are repeated, 3 extra rows" in message


def test_questions_join_their_own_annotation_and_those_without_one_are_reported(tmp_path, capfd):
    questions = _questions()
    annotations = _annotations(questions)
    annotations["annotations"].reverse()  # the join is by id, not by position
    for ann in annotations["annotations"]:
        ann["multiple_choice_answer"] = str(ann["question_id"])
        ann["answers"][0]["answer"] = f"a{ann['question_id']}"
    del annotations["annotations"][50:]
    table = _read(tmp_path, questions, annotations)
    assert table.num_rows == 50
    ids = table.column("question_id").to_pylist()
    assert ids == [q["question_id"] for q in questions["questions"][10:]]  # in the questions' order
    assert table.column("multiple_choice_answer").to_pylist() == [str(i) for i in ids]
    assert [a[0] for a in table.column("answers").to_pylist()] == [f"a{i}" for i in ids]
    assert table.column("image")[0].as_py() == f"val2014/COCO_val2014_{IMAGE_ID:012d}.jpg"
    assert "leaving out 10 of 60 questions that have no annotation" in capfd.readouterr().err
    assert _read(tmp_path, questions, None).column("answers").null_count == 60
    for ann in annotations["annotations"]:
        ann["question_id"] += 10**9  # the annotations of another subtype
    with pytest.raises(DataError, match="none of the 60 questions of .*questions.json has an annotation"):
        _read(tmp_path, questions, annotations)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "is empty"),
        ("  \n", "is empty"),
        ('{"questions": [', "is not valid JSON"),
        ("[]", "the document is a list, expected an object"),
        (b"\xff\xfe{}", "cannot be read as UTF-8 text"),
    ],
)
def test_an_empty_corrupt_or_wrong_shaped_file_is_one_clear_line(tmp_path, content, needle):
    path = tmp_path / "questions.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=needle) as caught:
        read_vqa_v2(path, None, image_pattern=PATTERN)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_a_bad_annotation_file_ends_the_cli_with_one_line(tmp_path):
    root = tmp_path / "vqa"
    (root / "val2014").mkdir(parents=True)
    image = f"COCO_val2014_{IMAGE_ID:012d}.jpg"
    os.symlink(FIXTURES / "vqa_v2" / "val2014" / image, root / "val2014" / image)
    questions = _questions()
    annotations = _annotations(questions)
    annotations["annotations"][33]["answers"] = None
    _write(root / "v2_OpenEnded_mscoco_val2014_questions.json", questions)
    _write(root / "v2_mscoco_val2014_annotations.json", annotations)
    subtypes = "dataset.subtypes={train:val2014,val:val2014}"
    result = cli_in_process("train", "dataset=vqa_v2", f"dataset.root={root}", subtypes, *TINY_TRAINING, cwd=tmp_path)
    assert_one_line_error(result, "v2_mscoco_val2014_annotations.json", "annotations[33].answers is null")


def test_coco_files_are_checked_at_every_record(tmp_path):
    real = json.loads((FIXTURES / "coco" / "annotations" / "captions_val2017.json").read_text())
    real["annotations"][200]["caption"] = 7
    path = _write(tmp_path / "captions.json", real)
    with pytest.raises(DataError, match=r"captions.json: annotations\[200\].caption is 7, expected a string"):
        read_coco_captions(path, image_folder="val2017")
    real["annotations"][200]["caption"] = "ok"
    real["images"].append(dict(real["images"][3]))
    _write(path, real)
    with pytest.raises(DataError, match=f"image id {real['images'][3]['id']} occurs 2 times"):
        read_coco_captions(path, image_folder="val2017")
    instances = json.loads((FIXTURES / "coco" / "annotations" / "instances_val2017.json").read_text())
    instances["annotations"][300]["bbox"] = [1, 2, 3]
    path = _write(tmp_path / "instances.json", instances)
    with pytest.raises(DataError, match=r"annotations\[300\].bbox is a list, expected a list of 4"):
        read_coco_instances([(path, "val2017")])
    instances["annotations"][300]["bbox"] = [1, 2, 3, 4]
    instances["annotations"][300]["category_id"] = 1000
    _write(path, instances)
    with pytest.raises(DataError, match=r"annotations\[300\].category_id 1000 is not in categories"):
        read_coco_instances([(path, "val2017")])
    karpathy = _write(tmp_path / "dataset_coco.json", {"images": [{"filepath": "val2014", "filename": "a.jpg"}]})
    with pytest.raises(DataError, match=r"images\[0\] has no key 'cocoid' \(expected an integer\)"):
        read_karpathy_captions(karpathy, ["val"])


def test_visual_genome_files_are_checked_at_every_record(tmp_path):
    records = json.loads((FIXTURES / "visual_genome" / "image_data.json").read_text())
    records[3].pop("url")
    path = _write(tmp_path / "image_data.json", records)
    with pytest.raises(DataError, match=r"image_data.json: \[3\] has no key 'url' \(expected a string\)"):
        read_image_records(path)
    records = json.loads((FIXTURES / "visual_genome" / "image_data.json").read_text())
    records[4]["image_id"] = records[1]["image_id"]
    _write(path, records)
    with pytest.raises(DataError, match=f"image_id {records[1]['image_id']} occurs 2 times"):
        read_image_records(path)
    images = read_image_records(FIXTURES / "visual_genome" / "image_data.json")
    regions = json.loads((FIXTURES / "visual_genome" / "region_descriptions.json").read_text())
    regions[2]["regions"][5]["x"] = "left"
    path = _write(tmp_path / "region_descriptions.json", regions)
    with pytest.raises(DataError, match=r"\[2\].regions\[5\].x is \"left\", expected a number"):
        read_visual_genome_regions(path, images, None)


def test_layouts_of_maps_and_fixed_size_lists(tmp_path):
    layout = pa.map_(pa.string(), pa.list_(pa.int64()))
    path = _write(tmp_path / "split.json", {"train": [1, 2], "val": [3, "4"]})
    with pytest.raises(DataError, match=r"val\[1\] is \"4\", expected an integer"):
        load_json(path, what="split file", layout=layout)
    boxes = pa.struct([required("box", pa.list_(pa.float64(), 4))])
    _write(path, {"box": [1, 2.5, 3, None]})
    with pytest.raises(DataError, match=r"box\[3\] is null, expected a number"):
        load_json(path, what="box file", layout=boxes)
