import hashlib
import json

import numpy as np
from PIL import Image

from cmvl.data.shapes.scene import sample_scene
from cmvl.data.shapes.world import ShapesSpec, write_shapes_world
from cmvl.data.sources.shapes import ShapesSource
from tests.conftest import TINY_SPEC


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    spec = ShapesSpec(images={"train": 6, "val": 3, "test": 2}, size=32, seed=7)
    for name in ("a", "b"):
        write_shapes_world(tmp_path / name, spec)
    write_shapes_world(tmp_path / "c", ShapesSpec(images=spec.images, size=32, seed=8))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_vqa_files_have_the_official_keys(tiny_world):
    questions = json.loads((tiny_world / "v2_OpenEnded_mscoco_val_questions.json").read_text())
    annotations = json.loads((tiny_world / "v2_mscoco_val_annotations.json").read_text())
    assert {"info", "task_type", "data_type", "license", "data_subtype", "questions"} <= questions.keys()
    assert {"info", "license", "data_subtype", "annotations", "data_type"} <= annotations.keys()
    assert set(questions["questions"][0]) == {"image_id", "question", "question_id"}
    ann = annotations["annotations"][0]
    assert set(ann) == {"question_type", "multiple_choice_answer", "answers", "image_id", "answer_type", "question_id"}
    assert len(ann["answers"]) == 10 and set(ann["answers"][0]) == {"answer", "answer_confidence", "answer_id"}
    assert {a["answer_type"] for a in annotations["annotations"]} <= {"yes/no", "number", "other"}
    assert [q["question_id"] for q in questions["questions"]] == [a["question_id"] for a in annotations["annotations"]]


def test_answers_vary_like_real_annotators(tiny_world):
    annotations = json.loads((tiny_world / "v2_mscoco_train_annotations.json").read_text())["annotations"]
    varied = [a for a in annotations if len({x["answer"] for x in a["answers"]}) > 1]
    assert 0.1 < len(varied) / len(annotations) < 0.5


def test_coco_and_visual_genome_layouts(tiny_world):
    captions = json.loads((tiny_world / "annotations" / "captions_train.json").read_text())
    instances = json.loads((tiny_world / "annotations" / "instances_train.json").read_text())
    assert {"info", "licenses", "images", "annotations"} <= captions.keys()
    per_image = {}
    for c in captions["annotations"]:
        per_image[c["image_id"]] = per_image.get(c["image_id"], 0) + 1
    assert set(per_image.values()) == {5}
    assert {c["name"] for c in instances["categories"]} == {"circle", "square", "triangle"}
    assert {"bbox", "category_id", "image_id", "area", "iscrowd", "segmentation", "id"} <= instances["annotations"][
        0
    ].keys()
    for name in ("image_data", "objects", "region_descriptions", "relationships", "question_answers", "attributes"):
        assert isinstance(json.loads((tiny_world / "visual_genome" / f"{name}.json").read_text()), list)
    karpathy = json.loads((tiny_world / "dataset_coco.json").read_text())
    assert {"filepath", "filename", "cocoid", "split", "sentences"} <= karpathy["images"][0].keys()


def test_images_exist_with_the_spec_size(tiny_world):
    source = ShapesSource(root=str(tiny_world))
    table = source.table("qa", "val")
    for rel in set(table.column("image").to_pylist()):
        with Image.open(tiny_world / rel) as im:
            assert im.size == (TINY_SPEC.size, TINY_SPEC.size)


def test_scenes_have_one_to_max_non_overlapping_objects():
    rng = np.random.default_rng(0)
    for i in range(200):
        scene = sample_scene(rng, image_id=i, size=64, max_objects=5)
        assert 1 <= len(scene.objects) <= 5
        for a in scene.objects:
            for b in scene.objects:
                if a is not b:
                    assert np.hypot(a.cx - b.cx, a.cy - b.cy) > a.r + b.r
