"""The `objects` table carries what detection and COCO's evaluation need: each object's area as the dataset states
it, its crowd flag, a free-text phrase, and the dataset's category ids (COCO, shapes, Visual Genome)."""

from __future__ import annotations

import json

import numpy as np

from cmvl.data.sources.coco import read_coco_instances
from cmvl.data.sources.shapes import ShapesSource
from cmvl.data.sources.visual_genome import VisualGenomeSource
from tests.conftest import FIXTURES, TINY_SPEC

INSTANCES_FILE = FIXTURES / "coco" / "annotations" / "instances_val2017.json"


def test_real_coco_instances_keep_area_crowd_and_category_ids():
    doc = json.loads(INSTANCES_FILE.read_text())
    table = read_coco_instances([(INSTANCES_FILE, "val2017")])
    assert json.loads(table.schema.metadata[b"category_ids"]) == sorted(c["id"] for c in doc["categories"])
    assert table.num_rows == len(doc["images"])  # images without objects too: COCO scores them
    names = json.loads(table.schema.metadata[b"categories"])
    crowds = 0
    for row in table.to_pylist():
        anns = [a for a in doc["annotations"] if a["image_id"] == row["image_id"]]
        assert np.allclose(row["area"], [a["area"] for a in anns], rtol=1e-6)  # the segment's area, not the box's
        assert row["phrases"] == [names[i] for i in row["labels"]]  # COCO has no attributes: the category name
        crowds += sum(row["iscrowd"])
    assert crowds == sum(a["iscrowd"] for a in doc["annotations"]) == 5


def test_shapes_objects_have_colour_shape_phrases_and_shape_areas(tiny_world, cache_dir):
    shapes = ShapesSource(root=str(tiny_world), num_images=TINY_SPEC.images, image_size=TINY_SPEC.size, seed=3)
    table = shapes.table("objects", "val")
    doc = json.loads((tiny_world / "annotations" / "instances_val.json").read_text())
    anns = sorted(doc["annotations"], key=lambda a: (a["image_id"], a["id"]))
    rows = table.to_pylist()
    phrases = [p for row in rows for p in row["phrases"]]
    names = json.loads(table.schema.metadata[b"categories"])
    assert phrases == [f"{a['attributes'][0]} {names[a['category_id'] - 1]}" for a in anns]
    assert np.allclose([v for row in rows for v in row["area"]], [a["area"] for a in anns], rtol=1e-6)


def test_visual_genome_objects_area_is_the_box_area(cache_dir, tmp_path):
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps({"train": [1, 2, 3, 4, 5], "val": [4, 5]}))
    source = VisualGenomeSource(root=str(FIXTURES / "visual_genome"), split_file=str(split_file))
    table = source.table("objects", "val")
    names = json.loads(table.schema.metadata[b"categories"])
    for row in table.to_pylist():
        boxes = np.array(row["boxes"]).reshape(-1, 4)
        assert np.allclose(row["area"], boxes[:, 2] * boxes[:, 3])
        assert row["phrases"] == [names[i] for i in row["labels"]]
    assert sum(len(row["labels"]) for row in table.to_pylist()) > 0
