"""dataset=coco reads the official captions/instances files (real fixtures) and the Karpathy split file (the shapes
world writes that layout): captions and objects tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmvl.data.sources.coco import COCOSource
from cmvl.data.sources.shapes import ShapesSource
from cmvl.errors import DataError
from tests.conftest import FIXTURES, TINY_SPEC

REAL = FIXTURES / "coco"
CAPTIONS = json.loads((REAL / "annotations" / "captions_val2017.json").read_text())
INSTANCES = json.loads((REAL / "annotations" / "instances_val2017.json").read_text())
PRESENT = sorted(int(p.stem) for p in (REAL / "val2017").glob("*.jpg"))


def test_real_captions_of_the_present_images(cache_dir, capfd):
    table = COCOSource(root=str(REAL)).table("captions", "val")
    expected = sorted(
        (a["image_id"], a["id"], a["caption"].strip()) for a in CAPTIONS["annotations"] if a["image_id"] in PRESENT
    )
    got = sorted(zip(*(table.column(c).to_pylist() for c in ("image_id", "caption_id", "caption"))))
    assert got == expected and len(got) == 10
    assert set(table.column("image").to_pylist()) == {f"val2017/{i:012d}.jpg" for i in PRESENT}
    assert "skipping 385 of 395 rows: 77 of 79 images are missing" in capfd.readouterr().err


def test_real_instances_give_labels_boxes_and_the_80_categories(cache_dir):
    table = COCOSource(root=str(REAL)).table("objects", "val")
    names = json.loads(table.schema.metadata[b"categories"])
    by_id = sorted(INSTANCES["categories"], key=lambda c: c["id"])
    assert names == [c["name"] for c in by_id] and len(names) == 80 and names[0] == "person"
    for row in table.to_pylist():
        anns = [a for a in INSTANCES["annotations"] if a["image_id"] == row["image_id"]]
        assert [names[i] for i in row["labels"]] == [
            next(c["name"] for c in by_id if c["id"] == a["category_id"]) for a in anns
        ]
        assert np.allclose(np.array(row["boxes"]).reshape(-1, 4), [a["bbox"] for a in anns], atol=1e-4)
        assert row["iscrowd"] == [bool(a["iscrowd"]) for a in anns]
        image = next(im for im in INSTANCES["images"] if im["id"] == row["image_id"])
        assert (row["width"], row["height"]) == (image["width"], image["height"])


def test_karpathy_split_file_and_shapes_tables(tiny_world, cache_dir):
    shapes_splits = {"train": "train", "val": "val", "test": "test"}
    karpathy = COCOSource(root=str(tiny_world), subtypes=shapes_splits, split_scheme="karpathy")
    doc = json.loads((tiny_world / "dataset_coco.json").read_text())
    for split in ("train", "val", "test"):
        images = [im for im in doc["images"] if im["split"] == split]
        captions = karpathy.table("captions", split)
        assert captions.num_rows == sum(len(im["sentences"]) for im in images)
        assert captions.column("caption")[0].as_py() == images[0]["sentences"][0]["raw"]
        objects = karpathy.table("objects", split)
        assert sorted(objects.column("image_id").to_pylist()) == sorted(im["cocoid"] for im in images)
    shapes = ShapesSource(root=str(tiny_world), num_images=TINY_SPEC.images, image_size=TINY_SPEC.size, seed=3)
    official = COCOSource(root=str(tiny_world), subtypes=shapes_splits)
    for kind in ("captions", "objects"):
        assert shapes.table(kind, "val").equals(official.table(kind, "val"))


def test_missing_annotation_file_is_one_clear_error(cache_dir):
    with pytest.raises(DataError, match="COCO captions file not found: .*captions_train2017.json"):
        COCOSource(root=str(REAL)).table("captions", "train")
