"""dataset=visual_genome reads the real VG fixture files: QA table, image folders from urls, image-level splits,
and VQA training + evaluation through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmvl.data.sources.visual_genome import VisualGenomeSource, image_split_share
from cmvl.errors import ConfigError
from tests.conftest import FIXTURES, cli_in_process

REAL = FIXTURES / "visual_genome"
REAL_QA = {d["qas"][0]["image_id"]: d["qas"] for d in json.loads((REAL / "question_answers.json").read_text())}


@pytest.fixture()
def split_file(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": [1, 2, 4], "val": [3, 5], "test": [5]}))
    return path


def test_real_files_give_the_qa_table_of_the_present_images(cache_dir, split_file, capfd):
    source = VisualGenomeSource(root=str(REAL), split_file=str(split_file))
    train = source.table("qa", "train")
    assert "skipping 256 of 412 rows: 2 of 3 images are missing" in capfd.readouterr().err  # images 1 and 2
    assert train.column("question_id").to_pylist() == [qa["qa_id"] for qa in REAL_QA[4]]
    assert set(train.column("image").to_pylist()) == {"VG_100K/4.jpg"}
    first = REAL_QA[4][0]
    row = {name: train.column(name)[0].as_py() for name in train.column_names}
    assert row["question"] == first["question"] and row["image_id"] == 4
    assert row["answers"] == [row["multiple_choice_answer"]] * 10
    assert source.table("qa", "val").column("image_id").to_pylist() == [5] * len(REAL_QA[5])


def test_answers_are_normalised_like_predictions(cache_dir, split_file):
    table = VisualGenomeSource(root=str(REAL), split_file=str(split_file)).table("qa", "train")
    answers = dict(zip(table.column("question_id").to_pylist(), table.column("multiple_choice_answer").to_pylist()))
    raw = {qa["qa_id"]: qa["answer"] for qa in REAL_QA[4]}
    two = [qid for qid, a in raw.items() if a == "Two."]
    assert two and all(answers[qid] == "2" for qid in two)
    types = dict(zip(table.column("question_id").to_pylist(), table.column("answer_type").to_pylist()))
    assert all(types[qid] == "number" for qid in two)


def test_seeded_partition_is_stable_and_proportional():
    ids = np.arange(1, 20001)
    share = image_split_share(ids, seed=0)
    assert abs((share < 0.9).mean() - 0.9) < 0.01
    assert np.array_equal(image_split_share(ids[::7], seed=0), share[::7])  # a subset keeps each image's split
    assert not np.array_equal(image_split_share(ids, seed=1), share)


def test_bad_split_fractions_say_so():
    with pytest.raises(ConfigError, match="sum to 1"):
        VisualGenomeSource(root=str(REAL), split_fractions={"train": 0.9, "val": 0.3})


def test_vqa_on_visual_genome_through_the_cli(tmp_path, cache_dir, split_file):
    run_dir = tmp_path / "run"
    overrides = ["dataset=visual_genome", f"dataset.root={REAL}", f"dataset.split_file={split_file}"]
    small = ["trainer=debug", "data.num_workers=0", "task.min_answer_count=1", "model.dim=32"]
    result = cli_in_process("train", *overrides, *small, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = cli_in_process("eval", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "val/vqa/acc = " in evaluated.stdout
    predictions = json.loads((run_dir / "checkpoints" / "predictions_vqa_val.json").read_text())
    assert sorted(p["question_id"] for p in predictions) == sorted(qa["qa_id"] for qa in REAL_QA[5])


@pytest.mark.parametrize("labels", ["names", "attributes"])
def test_objects_table_labels_come_from_the_train_split(cache_dir, split_file, labels):
    source = VisualGenomeSource(root=str(REAL), split_file=str(split_file), object_categories=6, object_labels=labels)
    table = source.table("objects", "val")
    categories = json.loads(table.schema.metadata[b"categories"])
    # The label set: the 6 most frequent terms on the train images (1, 2, 4), ties by spelling.
    documents = json.loads((REAL / ("objects.json" if labels == "names" else "attributes.json")).read_text())
    key = "objects" if labels == "names" else "attributes"
    counts: dict[str, int] = {}
    for doc in documents:
        if doc["image_id"] in (1, 2, 4):
            for obj in doc[key]:
                for term in obj.get(labels) or []:
                    counts[term.strip().lower()] = counts.get(term.strip().lower(), 0) + 1
    assert categories == sorted(counts, key=lambda t: (-counts[t], t))[:6]
    (row,) = table.to_pylist()  # image 5 (image 3 of the val split has no file in the fixtures)
    expected = [
        categories.index(t)
        for obj in next(d for d in documents if d["image_id"] == 5)[key]
        for t in dict.fromkeys(x.strip().lower() for x in obj.get(labels) or [])
        if t in categories
    ]
    assert row["image_id"] == 5 and row["labels"] == expected and len(row["boxes"]) == len(expected)


def test_relationships_become_grounding_phrases_with_the_subjects_box(cache_dir, split_file):
    source = VisualGenomeSource(root=str(REAL), split_file=str(split_file), region_phrases="relationships")
    table = source.table("regions", "val")  # image 5 (image 3 has no file in the fixtures)
    documents = json.loads((REAL / "relationships.json").read_text())
    expected = []
    for doc in documents:
        for rel in doc["relationships"]:
            if rel.get("image_id", doc.get("image_id")) != 5:
                continue
            subject, obj = rel["subject"], rel["object"]
            first = [(s.get("names") or [s.get("name")])[0].strip().lower() for s in (subject, obj)]
            expected.append((rel["relationship_id"], f"{first[0]} {rel['predicate'].strip().lower()} {first[1]}"))
    rows = table.to_pylist()
    assert [(r["region_id"], r["phrase"]) for r in rows] == expected and len(rows) == 28  # every one, in file order
    assert rows[0]["phrase"] == "cables on floor"
    by_id = {r["relationship_id"]: r for doc in documents for r in doc["relationships"]}
    for row in rows:
        subject = by_id[row["region_id"]]["subject"]
        x, y = row["box"][:2]
        assert (x, y) == (max(subject["x"], 0), max(subject["y"], 0)) and row["image"] == "VG_100K/5.jpg"
    with pytest.raises(ConfigError, match="dataset.region_phrases=triples: choose one of descriptions, relationships"):
        VisualGenomeSource(root=str(REAL), split_file=str(split_file), region_phrases="triples")
